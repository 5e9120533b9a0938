//! Fuzzing the CNI plugins' input parsing (issue: a standing fault suite): the skel's
//! environment and stdin handling, the bridge and host-local configurations, CNI_ARGS
//! and flannel's subnet.env. Nothing may panic; every error carries a code and a
//! message, as the spec requires of a plugin's error result. Bounded in CI;
//! `TWILL_FUZZ_CASES=100000 cargo test --release -p twill-cni --test fuzz` for a long run.

use proptest::prelude::*;
use serde_json::json;
use twill_cni::skel::prepare;
use twill_testkit::fuzz::{cases, mutate};

/// A valid conflist entry as flannel's CNI writes it, and a host-local one with ranges.
fn seeds() -> Vec<String> {
    vec![
        json!({
            "cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true, "mtu": 1450, "hairpinMode": true,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/tmp/x"},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}
        })
        .to_string(),
        json!({
            "cniVersion": "1.1.0", "name": "net-1", "type": "host-local",
            "ipam": {"type": "host-local",
                     "ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9",
                                  "rangeEnd": "10.1.2.20", "gateway": "10.1.2.30"}],
                                [{"subnet": "fd00::/120"}]],
                     "ips": ["10.1.2.10"], "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
            "args": {"cni": {"ips": ["10.1.2.11"]}},
            "cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]
        })
        .to_string(),
    ]
}

fn env_of(
    command: &'static str,
    id: String,
    ifname: String,
    args: String,
) -> impl Fn(&str) -> Option<String> {
    move |k: &str| match k {
        "CNI_COMMAND" => Some(command.to_string()),
        "CNI_CONTAINERID" => Some(id.clone()),
        "CNI_NETNS" => Some("/var/run/netns/x".into()),
        "CNI_IFNAME" => Some(ifname.clone()),
        "CNI_PATH" => Some("/opt/cni/bin".into()),
        "CNI_ARGS" => Some(args.clone()),
        _ => None,
    }
}

fn commands() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "",
    ])
}

/// Everything the plugins parse before touching the system.
fn parse_all(command: &'static str, id: String, ifname: String, args: String, stdin: &[u8]) {
    let env = env_of(command, id, ifname, args.clone());
    match prepare(&env, stdin) {
        Ok(a) => {
            let _ = twill_cni::bridge::parse_conf(&a);
            if let Some(ipam) = a.conf.get("ipam") {
                let mut net = a.conf.clone();
                net["ipam"] = ipam.clone();
                let _ = twill_ipam::parse_ipam_config(&net);
            }
            let _ = twill_ipam::parse_cni_args(&args);
        }
        Err((e, version)) => {
            assert!(!e.msg.is_empty(), "an error without a message: {e:?}");
            assert!(!version.is_empty());
            let v = e.to_json(&version);
            assert!(v["code"].as_u64().is_some(), "{v}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_stdin_and_environment_never_panic(
        command in commands(),
        id in "[ -~]{0,12}",
        ifname in "[ -~]{0,18}",
        args in "[ -~]{0,40}",
        stdin in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        parse_all(command, id, ifname, args, &stdin);
    }

    #[test]
    fn edited_valid_configurations_never_panic(
        command in commands(),
        seed in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..8),
        args in prop::sample::select(vec![
            "", "IP=10.1.2.12", "IgnoreUnknown=1;IP=10.1.2.12,fd00::5", "IP=", "IP=300.1.1.1;X",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p;=;;",
        ]),
    ) {
        let seeds = seeds();
        let stdin = mutate(seeds[seed.index(seeds.len())].as_bytes(), &edits);
        parse_all(command, "c1".into(), "eth0".into(), args.to_string(), &stdin);
    }

    #[test]
    fn subnet_env_text_never_panics(text in "(FLANNEL_[A-Z]{2,7}=[ -~]{0,24}\n){0,6}[ -~\n]{0,40}") {
        let _ = twill_cni::flannel::parse_subnet_env(&text);
    }
}

/// The seeds are valid, so the edits explore near real configurations.
#[test]
fn the_seed_configurations_parse() {
    for s in seeds() {
        let env = env_of("ADD", "c1".into(), "eth0".into(), String::new());
        let a = prepare(&env, s.as_bytes()).unwrap_or_else(|(e, _)| panic!("{s}: {e:?}"));
        assert!(twill_cni::bridge::parse_conf(&a).is_ok(), "{s}");
        assert!(twill_ipam::parse_ipam_config(&a.conf).is_ok(), "{s}");
    }
}
