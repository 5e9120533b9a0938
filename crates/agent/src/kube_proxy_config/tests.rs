use std::time::Duration;

use super::*;

/// What kubeadm writes into the kube-proxy ConfigMap: every field, zero values.
const KUBEADM: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

#[test]
fn kubeadms_file_loads_without_a_warning() {
    let f = parse(KUBEADM).unwrap();
    assert_eq!(f.warning(), None, "{f:?}");
    assert_eq!(f.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
    assert_eq!(
        f.kubeconfig.as_deref(),
        Some(std::path::Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(f.mode, None);
    assert_eq!(f.node_ip, None, "0.0.0.0 is no address");
    assert_eq!(f.conntrack, Conntrack::default());
}

#[test]
fn honoured_fields_are_folded_from_the_section_of_the_mode() {
    let f = parse(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: node-1
bindAddress: 192.168.1.10
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
clusterCIDR: 10.244.0.0/16,fd00:10:244::/56
detectLocalMode: InterfaceNamePrefix
detectLocal: {interfaceNamePrefix: veth}
nodePortAddresses: [primary]
iptables: {masqueradeBit: 14, syncPeriod: 30s}
nftables: {masqueradeBit: 13, masqueradeAll: true, syncPeriod: 1m30s, minSyncPeriod: 500ms}
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 2h
  tcpCloseWaitTimeout: 1h0m0s
  tcpBeLiberal: true
  udpTimeout: 30s
  udpStreamTimeout: 2m
",
    )
    .unwrap();
    assert_eq!(f.warning(), None, "{f:?}");
    assert_eq!(f.mode, Some(Mode::Nftables));
    assert_eq!(f.hostname_override.as_deref(), Some("node-1"));
    assert_eq!(f.node_ip, Some("192.168.1.10".parse().unwrap()));
    assert_eq!(
        f.healthz_bind_address,
        Some("0.0.0.0:10256".parse().unwrap())
    );
    assert_eq!(
        f.detect_local,
        Some(DetectLocal::InterfaceNamePrefix("veth".into()))
    );
    assert_eq!(f.nodeport_addresses, ["primary"]);
    assert_eq!(
        f.masquerade_bit,
        Some(13),
        "nftables mode reads its own section"
    );
    assert!(f.masquerade_all);
    assert_eq!(f.sync_period, Some(Duration::from_secs(90)));
    assert_eq!(f.min_sync_period, Some(Duration::from_millis(500)));
    assert_eq!(
        f.conntrack,
        Conntrack {
            max_per_core: Some(0),
            min: None,
            tcp_established_timeout: Some(Duration::from_secs(7200)),
            tcp_close_wait_timeout: Some(Duration::from_secs(3600)),
            tcp_be_liberal: true,
            udp_timeout: Some(Duration::from_secs(30)),
            udp_stream_timeout: Some(Duration::from_secs(120)),
        }
    );
}

#[test]
fn fields_twill_does_not_do_and_unknown_ones_are_named_in_one_line() {
    let f = parse(
        "kind: KubeProxyConfiguration
mode: iptables
oomScoreAdj: -999
enableProfiling: true
featureGates: {SomeGate: true}
ipvs: {scheduler: lc, strictARP: true}
nftables: {masqueradeAll: true}
clientConnection: {qps: 50}
conntrack: {bogus: 1}
clusterCidr: 10.0.0.0/8
",
    )
    .unwrap();
    let w = f.warning().unwrap();
    assert!(!w.contains('\n'), "one line: {w}");
    for name in [
        "featureGates SomeGate",
        "enableProfiling",
        "oomScoreAdj",
        "ipvs.scheduler",
        "ipvs.strictARP",
        "nftables.* (the mode is not nftables)",
        "clientConnection.qps",
        "unknown fields (not in kubeproxy.config.k8s.io/v1alpha1): conntrack.bogus, clusterCidr",
    ] {
        assert!(w.contains(name), "{name} missing from: {w}");
    }
    assert_eq!(f.cluster_cidr, None, "clusterCidr is not clusterCIDR");
}

#[test]
fn invalid_values_are_errors_naming_every_field() {
    let errs = parse(
        "kind: KubeProxyConfiguration
mode: ipvsx
bindAddress: nope
metricsBindAddress: 127.0.0.1
clusterCIDR: 10.0.0.0/33
nodePortAddresses: [primary, 10.0.0.0/8]
iptables: {masqueradeBit: 32, syncPeriod: 30 seconds}
detectLocalMode: BridgeInterface
conntrack: {maxPerCore: -1}
",
    )
    .unwrap_err();
    let text = errs.join("\n");
    for want in [
        "mode: \"ipvsx\" is not a kube-proxy mode",
        "bindAddress: \"nope\" is not an IP address",
        "metricsBindAddress: \"127.0.0.1\" is not an IP:port address",
        "clusterCIDR: \"10.0.0.0/33\" is not a CIDR",
        "nodePortAddresses: \"primary\" must be the only entry",
        "iptables.masqueradeBit: 32 is outside 0-31",
        "iptables.syncPeriod: duration \"30 seconds\"",
        "detectLocal.bridgeInterface: required with detectLocalMode BridgeInterface",
        "conntrack.maxPerCore: must not be negative",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let wrong_type = parse("kind: KubeProxyConfiguration\niptables: {masqueradeAll: maybe}\n")
        .unwrap_err()
        .join("\n");
    assert!(
        wrong_type.contains("iptables.masqueradeAll"),
        "{wrong_type}"
    );
    let wrong_kind = parse("kind: KubeletConfiguration\n")
        .unwrap_err()
        .join("\n");
    assert!(
        wrong_kind.contains("kind: Some(\"KubeletConfiguration\")"),
        "{wrong_kind}"
    );
}

#[test]
fn go_durations_parse() {
    for (s, secs) in [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("0", 0.0),
        ("0s", 0.0),
        ("2h22m", 8520.0),
        ("1us", 1e-6),
    ] {
        assert_eq!(parse_duration(s).unwrap().as_secs_f64(), secs, "{s}");
    }
    for bad in ["", "30", "s", "1d", "3 s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}
