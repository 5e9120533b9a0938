//! Golden messages, derived by hand from the kernel's UAPI headers, not from the encoder.
//!
//! Sources of every byte:
//! - `struct nlmsghdr` (`include/uapi/linux/netlink.h`): `__u32 nlmsg_len; __u16
//!   nlmsg_type; __u16 nlmsg_flags; __u32 nlmsg_seq; __u32 nlmsg_pid;`, host byte order
//!   (these tests assume little-endian, as on x86-64 and arm64). `NLM_F_REQUEST` = 0x01,
//!   `NLM_F_ACK` = 0x04, `NLM_F_DUMP` = `NLM_F_ROOT|NLM_F_MATCH` = 0x100|0x200 = 0x300.
//! - `struct genlmsghdr` (`include/uapi/linux/genetlink.h`): `__u8 cmd; __u8 version;
//!   __u16 reserved;`. `GENL_ID_CTRL` = `NLMSG_MIN_TYPE` = 0x10, `CTRL_CMD_GETFAMILY` = 3,
//!   `CTRL_ATTR_FAMILY_NAME` = 2.
//! - `struct nlattr`: `__u16 nla_len` (header + value, unpadded); `__u16 nla_type`; the
//!   value is padded to 4 bytes (`NLA_ALIGNTO`). `NLA_F_NESTED` = 0x8000.
//! - `include/uapi/linux/ip_vs.h`: `IPVS_GENL_VERSION` 0x1; commands NEW_SERVICE 1,
//!   SET_SERVICE 2, DEL_SERVICE 3, GET_SERVICE 4, NEW_DEST 5, SET_DEST 6, DEL_DEST 7;
//!   `IPVS_CMD_ATTR_SERVICE` 1, `IPVS_CMD_ATTR_DEST` 2; `IPVS_SVC_ATTR_` AF 1,
//!   PROTOCOL 2, ADDR 3, PORT 4, SCHED_NAME 6, FLAGS 7, TIMEOUT 8, NETMASK 9;
//!   `IPVS_DEST_ATTR_` ADDR 1, PORT 2, FWD_METHOD 3, WEIGHT 4, U_THRESH 5, L_THRESH 6,
//!   ACTIVE_CONNS 7, INACT_CONNS 8, ADDR_FAMILY 11; `IP_VS_CONN_F_MASQ` 0;
//!   `IP_VS_SVC_F_PERSISTENT` 0x1; `struct ip_vs_flags { __u32 flags; __u32 mask; }`.
//! - `AF_INET` 2, `AF_INET6` 10; `IPPROTO_TCP` 6, `IPPROTO_UDP` 17.
//! - Ports are `__be16` (the kernel reads them with `nla_get_be16`).

use std::net::{IpAddr, SocketAddr};

use twill_model::Protocol;

use super::*;
use crate::plan::{RealServer, ServiceSpec, VsKey};

/// 37 stands for whatever id the controller hands out for "IPVS" (0x25).
const FAM: u16 = 37;

fn key_v4() -> VsKey {
    VsKey {
        addr: "10.96.0.10".parse().unwrap(),
        protocol: Protocol::Tcp,
        port: 53,
    }
}

fn rr() -> ServiceSpec {
    ServiceSpec {
        scheduler: "rr".into(),
        flags: 0,
        timeout: 0,
        netmask: 0xffff_ffff,
    }
}

/// The service key attributes of 10.96.0.10:53/TCP: 44 bytes.
fn svc_key_v4_bytes() -> Vec<u8> {
    let mut v = vec![
        6, 0, 1, 0, 2, 0, 0, 0, // AF: len 6 (4+2), type 1, AF_INET=2, 2 bytes padding
        6, 0, 2, 0, 6, 0, 0, 0, // PROTOCOL: len 6, type 2, IPPROTO_TCP=6, padding
        20, 0, 3, 0, 10, 96, 0, 10, // ADDR: len 20 (4+16), type 3, 10.96.0.10 ...
    ];
    v.extend_from_slice(&[0; 12]); // ... rest of the 16-byte nf_inet_addr
    v.extend_from_slice(&[6, 0, 4, 0, 0, 53, 0, 0]); // PORT: len 6, type 4, be16 53, pad
    v
}

#[test]
fn family_lookup_matches_the_controller_wire_format() {
    let expected: Vec<u8> = vec![
        32, 0, 0, 0, // nlmsg_len: 16 header + 4 genl + 12 attribute
        0x10, 0, // nlmsg_type: GENL_ID_CTRL
        0x01, 0, // flags: NLM_F_REQUEST
        9, 0, 0, 0, // seq 9
        0, 0, 0, 0, // pid 0 (kernel)
        3, 1, 0, 0, // genl: CTRL_CMD_GETFAMILY, version 1, reserved
        9, 0, 2, 0, // nla_len 9 (4 + "IPVS\0"), CTRL_ATTR_FAMILY_NAME
        b'I', b'P', b'V', b'S', 0, 0, 0, 0, // name, NUL, 3 bytes padding
    ];
    assert_eq!(resolve_family(9), expected);
}

#[test]
fn new_service_carries_every_field_the_kernel_requires_for_a_full_entry() {
    let mut inner = svc_key_v4_bytes();
    inner.extend_from_slice(&[7, 0, 6, 0, b'r', b'r', 0, 0]); // SCHED_NAME "rr\0": len 7, pad 1
    inner.extend_from_slice(&[12, 0, 7, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]); // FLAGS {0, mask ~0}
    inner.extend_from_slice(&[8, 0, 8, 0, 0, 0, 0, 0]); // TIMEOUT 0
    inner.extend_from_slice(&[8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff]); // NETMASK 0xffffffff
    assert_eq!(inner.len(), 80);
    let mut expected = vec![
        104, 0, 0, 0, // 16 + 4 + (4 + 80)
        FAM as u8, 0, // the IPVS family id
        0x05, 0, // NLM_F_REQUEST | NLM_F_ACK
        7, 0, 0, 0, // seq
        0, 0, 0, 0, // pid
        1, 1, 0, 0, // IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION
        84, 0, 1, 0x80, // IPVS_CMD_ATTR_SERVICE | NLA_F_NESTED, len 4 + 80
    ];
    expected.extend_from_slice(&inner);
    assert_eq!(new_service(FAM, &key_v4(), &rr(), 7), expected);
}

#[test]
fn persistence_sets_the_persistent_flag_and_timeout() {
    let spec = ServiceSpec {
        scheduler: "sh".into(),
        flags: 0x1,
        timeout: 10800,
        netmask: 0xffff_ffff,
    };
    let got = set_service(FAM, &key_v4(), &spec, 1);
    assert_eq!(got[16], 2, "IPVS_CMD_SET_SERVICE");
    let tail = &got[got.len() - 28..];
    // FLAGS {PERSISTENT, mask ~0}; TIMEOUT 10800 = 0x2a30; NETMASK.
    assert_eq!(
        tail,
        &[
            12, 0, 7, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, //
            8, 0, 8, 0, 0x30, 0x2a, 0, 0, //
            8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff,
        ]
    );
}

#[test]
fn new_dest_sends_the_service_key_and_a_full_masquerading_destination() {
    let rs = RealServer {
        addr: "10.244.1.5:5353".parse().unwrap(),
        weight: 1,
    };
    let mut expected = vec![
        140, 0, 0, 0, // 16 + 4 + 48 + 72
        FAM as u8, 0, 0x05, 0, 3, 0, 0, 0, 0, 0, 0, 0, //
        5, 1, 0, 0, // IPVS_CMD_NEW_DEST
        48, 0, 1, 0x80, // SERVICE nest: 4 + 44
    ];
    expected.extend_from_slice(&svc_key_v4_bytes());
    expected.extend_from_slice(&[72, 0, 2, 0x80]); // DEST nest: 4 + 68
    expected.extend_from_slice(&[20, 0, 1, 0, 10, 244, 1, 5]); // ADDR 10.244.1.5
    expected.extend_from_slice(&[0; 12]);
    expected.extend_from_slice(&[6, 0, 2, 0, 0x14, 0xe9, 0, 0]); // PORT be16 5353 = 0x14e9
    expected.extend_from_slice(&[8, 0, 3, 0, 0, 0, 0, 0]); // FWD_METHOD MASQ
    expected.extend_from_slice(&[8, 0, 4, 0, 1, 0, 0, 0]); // WEIGHT 1
    expected.extend_from_slice(&[8, 0, 5, 0, 0, 0, 0, 0]); // U_THRESH 0
    expected.extend_from_slice(&[8, 0, 6, 0, 0, 0, 0, 0]); // L_THRESH 0
    expected.extend_from_slice(&[6, 0, 11, 0, 2, 0, 0, 0]); // ADDR_FAMILY AF_INET
    assert_eq!(new_dest(FAM, &key_v4(), &rs, 3), expected);
}

#[test]
fn del_dest_and_del_service_carry_only_the_keys() {
    let rs: SocketAddr = "10.244.1.5:5353".parse().unwrap();
    let got = del_dest(FAM, &key_v4(), &rs, 4);
    assert_eq!(got.len(), 16 + 4 + 48 + 4 + 28);
    assert_eq!(got[16], 7, "IPVS_CMD_DEL_DEST");
    assert_eq!(&got[68..72], &[32, 0, 2, 0x80]);

    let v6 = VsKey {
        addr: "fd00:10:96::a".parse().unwrap(),
        protocol: Protocol::Udp,
        port: 53,
    };
    let mut expected = vec![
        68, 0, 0, 0, FAM as u8, 0, 0x05, 0, 2, 0, 0, 0, 0, 0, 0, 0, //
        3, 1, 0, 0, // IPVS_CMD_DEL_SERVICE
        48, 0, 1, 0x80, //
        6, 0, 1, 0, 10, 0, 0, 0, // AF_INET6 = 10
        6, 0, 2, 0, 17, 0, 0, 0, // IPPROTO_UDP = 17
        20, 0, 3, 0, 0xfd, 0x00, 0x00, 0x10, 0x00, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0a, 6, 0, 4,
        0, 0, 53, 0, 0,
    ];
    expected.truncate(expected.len());
    assert_eq!(del_service(FAM, &v6, 2), expected);
}

#[test]
fn service_dump_request_is_an_empty_get_with_the_dump_flags() {
    let expected = vec![
        20, 0, 0, 0, FAM as u8, 0, //
        0x01, 0x03, // NLM_F_REQUEST | NLM_F_DUMP = 0x0301
        5, 0, 0, 0, 0, 0, 0, 0, //
        4, 1, 0, 0, // IPVS_CMD_GET_SERVICE
    ];
    assert_eq!(get_services(FAM, 5), expected);
}

#[test]
fn the_family_id_is_read_from_a_controller_reply_and_enoent_is_an_error() {
    // A NEWFAMILY reply, 16 + 4 + 8 + 12 = 40 bytes: header, genl {CTRL_CMD_NEWFAMILY=1, 2}, CTRL_ATTR_FAMILY_ID
    // (u16 0x25), then the name (ignored).
    let reply = vec![
        40, 0, 0, 0, 0x10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, //
        1, 2, 0, 0, //
        6, 0, 1, 0, 0x25, 0, 0, 0, //
        9, 0, 2, 0, b'I', b'P', b'V', b'S', 0, 0, 0, 0,
    ];
    assert_eq!(parse_family_id(&reply), Ok(0x25));
    // An NLMSG_ERROR (2) with error -2 (ENOENT) and the request's header echoed.
    let mut err = vec![36, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
    err.extend_from_slice(&(-2i32).to_le_bytes());
    err.extend_from_slice(&resolve_family(1)[..16]);
    assert_eq!(parse_family_id(&err), Err(ReplyError::Errno { errno: 2 }));
}

#[test]
fn dump_replies_decode_into_keys_specs_and_destinations() {
    // A GET_SERVICE reply as the kernel writes it: it adds HASHED (0x2) to the flags.
    let mut svc = vec![0u8; 16];
    svc.extend_from_slice(&[4, 1, 0, 0]);
    let mut inner = svc_key_v4_bytes();
    inner.extend_from_slice(&[7, 0, 6, 0, b'r', b'r', 0, 0]);
    inner.extend_from_slice(&[12, 0, 7, 0, 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    inner.extend_from_slice(&[8, 0, 8, 0, 0x30, 0x2a, 0, 0]);
    inner.extend_from_slice(&[8, 0, 9, 0, 0xff, 0xff, 0xff, 0xff]);
    svc.extend_from_slice(&[(inner.len() + 4) as u8, 0, 1, 0]); // kernels omit NLA_F_NESTED
    svc.extend_from_slice(&inner);
    let len = svc.len() as u32;
    svc[..4].copy_from_slice(&len.to_le_bytes());
    svc[4..6].copy_from_slice(&FAM.to_le_bytes());
    let msgs = split(&svc).unwrap();
    let (k, spec) = parse_service(&msgs[0]).unwrap();
    assert_eq!(k, key_v4());
    assert_eq!(
        spec,
        ServiceSpec {
            scheduler: "rr".into(),
            flags: 3,
            timeout: 10800,
            netmask: 0xffff_ffff
        }
    );

    let mut d = vec![0u8; 16];
    d.extend_from_slice(&[8, 1, 0, 0]);
    let mut inner = vec![20, 0, 1, 0, 10, 244, 1, 5];
    inner.extend_from_slice(&[0; 12]);
    inner.extend_from_slice(&[6, 0, 2, 0, 0x14, 0xe9, 0, 0]);
    inner.extend_from_slice(&[8, 0, 4, 0, 0, 0, 0, 0]); // weight 0 (draining)
    inner.extend_from_slice(&[8, 0, 7, 0, 3, 0, 0, 0]); // 3 active
    inner.extend_from_slice(&[8, 0, 8, 0, 1, 0, 0, 0]); // 1 inactive
    d.extend_from_slice(&[(inner.len() + 4) as u8, 0, 2, 0]);
    d.extend_from_slice(&inner);
    let len = d.len() as u32;
    d[..4].copy_from_slice(&len.to_le_bytes());
    let msgs = split(&d).unwrap();
    let (addr, kd) = parse_dest(&msgs[0], 2).unwrap();
    assert_eq!(addr, "10.244.1.5:5353".parse::<SocketAddr>().unwrap());
    assert_eq!((kd.weight, kd.active_conns, kd.inactive_conns), (0, 3, 1));
}

#[test]
fn every_encoded_message_splits_back_into_one_message_of_its_own_length() {
    let rs = RealServer {
        addr: SocketAddr::new(IpAddr::from([10, 0, 0, 1]), 80),
        weight: 5,
    };
    for m in [
        resolve_family(1),
        new_service(FAM, &key_v4(), &rr(), 2),
        set_dest(FAM, &key_v4(), &rs, 3),
        get_dests(FAM, &key_v4(), 4),
    ] {
        let parts = split(&m).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].payload.len() + 16, m.len());
        assert_eq!(m.len() % 4, 0);
    }
}
