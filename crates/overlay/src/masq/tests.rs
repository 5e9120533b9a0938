use super::*;

#[test]
fn restore_text_declares_only_flannel_chains_and_never_the_jumps() {
    let r = render_masquerade(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.1.0/24".parse().unwrap(),
        MasqOptions {
            ip_masq: true,
            random_fully: false,
            forward_rules: true,
        },
    );
    let text = render_restore(&r);
    assert!(
        text.starts_with("*nat\n:FLANNEL-POSTRTG - [0:0]\n"),
        "{text}"
    );
    assert!(text.contains("*filter\n:FLANNEL-FWD - [0:0]\n"));
    assert!(!text.contains("-A POSTROUTING") && !text.contains("-A FORWARD"));
    assert!(!text.contains("--random-fully"));
    assert_eq!(text.matches("COMMIT\n").count(), 2);
}

#[test]
fn nothing_is_rendered_when_masquerade_and_forward_rules_are_off() {
    let r = render_masquerade(
        "10.244.0.0/16".parse().unwrap(),
        "10.244.1.0/24".parse().unwrap(),
        MasqOptions {
            ip_masq: false,
            random_fully: true,
            forward_rules: false,
        },
    );
    assert_eq!(render_restore(&r), "");
}
