use super::*;

#[test]
fn delegate_fills_only_unset_keys_from_subnet_env() {
    let env = parse_subnet_env(
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    let conf = json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
        "delegate": {"hairpinMode": true, "mtu": 1400}, "ipam": {"dataDir": "/d"}});
    let d = plan_delegate(&conf, &env).unwrap();
    assert_eq!(
        d,
        json!({"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "hairpinMode": true,
            "ipMasq": false, "mtu": 1400, "isGateway": true,
            "ipam": {"dataDir": "/d", "type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                     "routes": [{"dst": "10.244.0.0/16"}]}})
    );
}

#[test]
fn subnet_env_without_a_subnet_is_an_error() {
    let env = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\n").unwrap();
    assert!(plan_delegate(&json!({"name": "n"}), &env).is_err());
    assert!(parse_subnet_env("FLANNEL_SUBNET=junk").is_err());
}
