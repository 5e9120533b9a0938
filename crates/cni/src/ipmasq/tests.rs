use super::*;

#[test]
fn chain_name_is_truncated_sha512_of_network_and_container() {
    assert_eq!(
        chain_name("CNI-", "mqnet", "m1"),
        "CNI-ceb3a097542cf6937a4ff998"
    );
    assert_eq!(
        chain_name("CNI-DN-", "chainnet", "c1"),
        "CNI-DN-e26e96f88412854951bb8"
    );
}

#[test]
fn setup_declares_a_missing_chain_and_adds_every_rule() {
    let c = chain_name("CNI-", "mqnet", "m1");
    let rules = render_rules(&c, &comment("mqnet", "m1"), "10.85.0.2/24".parse().unwrap());
    let plan = plan_setup("*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n", &c, &rules).unwrap();
    assert!(plan.contains(&format!(":{c} - [0:0]")));
    assert!(plan.contains(&format!("-A {c} -d 10.85.0.0/24 -m comment --comment \"name: \\\"mqnet\\\" id: \\\"m1\\\"\" -j ACCEPT")));
    assert!(plan.find(&format!("-A {c} !")).unwrap() < plan.find("-A POSTROUTING").unwrap());
}

#[test]
fn setup_keeps_an_existing_chain_and_adds_only_missing_rules() {
    let c = chain_name("CNI-", "n", "c");
    let cm = comment("n", "c");
    let first = render_rules(&c, &cm, "10.1.0.2/24".parse().unwrap());
    let save = format!("*nat\n:{c} - [0:0]\n{}\nCOMMIT\n", first.join("\n"));
    assert_eq!(plan_setup(&save, &c, &first), None);
    let second = render_rules(&c, &cm, "10.2.0.2/24".parse().unwrap());
    let plan = plan_setup(&save, &c, &second).unwrap();
    assert!(
        !plan.contains(&format!(":{c}")),
        "an existing chain must not be flushed: {plan}"
    );
    assert_eq!(
        plan.lines().filter(|l| l.starts_with("-A")).count(),
        2,
        "{plan}"
    );
}

#[test]
fn gc_finds_masquerade_rules_of_unknown_containers_of_this_network_only() {
    let mut save = String::from("*nat\n");
    for (net, id) in [("n", "keep"), ("n", "gone"), ("other", "x")] {
        let c = chain_name("CNI-", net, id);
        save.push_str(
            &render_rules(&c, &comment(net, id), "10.1.0.2/24".parse().unwrap()).join("\n"),
        );
        save.push('\n');
    }
    assert_eq!(
        stale_container_ids(&save, "n", &["keep"]),
        vec!["gone".to_string()]
    );
}

#[test]
fn teardown_removes_jumps_and_chain_and_nothing_when_absent() {
    let c = chain_name("CNI-", "n", "c");
    let rules = render_rules(&c, &comment("n", "c"), "10.1.0.2/24".parse().unwrap());
    let save = format!("*nat\n:{c} - [0:0]\n{}\nCOMMIT\n", rules.join("\n"));
    let plan = plan_teardown(&save, &c).unwrap();
    assert!(plan.contains("-D POSTROUTING -s 10.1.0.2/32"));
    assert!(plan.contains(&format!("-X {c}")));
    assert_eq!(plan_teardown("*nat\nCOMMIT\n", &c), None);
}
