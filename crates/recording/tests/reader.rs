//! `load_feed` from the outside: every capture flavour (the writer's, pcap-file's,
//! tcpdump's and editcap's) gives the same packets; ordering, duplicates and the
//! schedule; clear errors; no panic on garbage or truncated files.
#![allow(clippy::unwrap_used)]

mod common;

use std::borrow::Cow;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use etherparse::{PacketBuilder, VlanId};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::{DataLink, Endianness, TsResolution};
use proptest::prelude::*;
use ticklab_recording::{
    Format, LoadedFeed, RecordingError, RecordingWriter, WriterConfig, load_feed, load_feed_bytes,
    original_latency, udp_frame,
};

/// What every file of the comparison holds: the data packets among other records.
struct Capture {
    /// (ts_ns, payload) of every UDP datagram, feed or not, in file order.
    datagrams: Vec<(u64, Vec<u8>)>,
    /// (ts_ns, payload) of the data packets only.
    data: Vec<(u64, Vec<u8>)>,
}

fn capture() -> Capture {
    let data = feed(30);
    let mut datagrams = data.clone();
    datagrams.insert(3, (T0 + 3_000_001, heartbeat("S1", 8)));
    datagrams.insert(9, (T0 + 9_000_001, b"some other UDP traffic".to_vec()));
    Capture { datagrams, data }
}

fn vlan_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .single_vlan(VlanId::try_new(42).unwrap())
        .ipv4([10, 1, 0, 1], [239, 1, 2, 3], 64)
        .udp(40000, 5000)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn raw_ipv4(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([10, 1, 0, 1], [239, 1, 2, 3], 64)
        .udp(40000, 5000)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ipv6_sll2(payload: &[u8]) -> Vec<u8> {
    // protocol, reserved, ifindex, ARPHRD_ETHER, packet type, addr len, addr
    let mut out = vec![
        0x86, 0xdd, 0, 0, 0, 0, 0, 3, 0, 1, 4, 6, 2, 0, 0, 0, 0, 1, 0, 0,
    ];
    PacketBuilder::ipv6([0xfe; 16], [0xff; 16], 64)
        .udp(40000, 5000)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn tcp_frame() -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(1, 2, 3, 1000)
        .write(&mut out, b"not udp")
        .unwrap();
    out
}

fn write_pcap(
    path: &Path,
    resolution: TsResolution,
    endianness: Endianness,
    datalink: DataLink,
    frames: &[(u64, Vec<u8>)],
) {
    let header = PcapHeader {
        ts_resolution: resolution,
        endianness,
        datalink,
        ..PcapHeader::default()
    };
    let mut w = PcapWriter::with_header(File::create(path).unwrap(), header).unwrap();
    for (ts, frame) in frames {
        let packet = PcapPacket::new(Duration::from_nanos(*ts), frame.len() as u32, frame);
        w.write_packet(&packet).unwrap();
    }
}

fn ns_ethernet_pcap_by_writer(dir: &Path, c: &Capture) -> PathBuf {
    let mut w = RecordingWriter::open(WriterConfig::new(dir.join("rec"), Format::Pcap)).unwrap();
    for (ts, p) in &c.datagrams {
        w.write_packet(*ts, src(), dst(), p).unwrap();
    }
    let path = w.current_file().unwrap().to_path_buf();
    w.close().unwrap();
    path
}

fn payloads_at_us(feed: &LoadedFeed) -> Vec<(u64, Vec<u8>)> {
    feed.packets
        .iter()
        .map(|p| (p.ts_ns / 1_000, p.payload.clone()))
        .collect()
}

#[test]
fn every_capture_flavour_gives_the_same_packets() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let c = capture();
    let expected_ns = c.data.clone();
    let expected_us: Vec<(u64, Vec<u8>)> = c
        .data
        .iter()
        .map(|(ts, p)| (ts / 1_000, p.clone()))
        .collect();
    let mut files: Vec<(PathBuf, bool)> = Vec::new(); // (file, has ns timestamps)

    // The recorder's own: pcap, ns, Ethernet.
    let own = ns_ethernet_pcap_by_writer(d, &c);
    files.push((own.clone(), true));

    // pcap-file: µs, big-endian, 802.1Q-tagged Ethernet, plus a TCP frame.
    let mut frames: Vec<(u64, Vec<u8>)> = c
        .datagrams
        .iter()
        .map(|(ts, p)| (*ts, vlan_frame(p)))
        .collect();
    frames.insert(5, (T0 + 5_000_001, tcp_frame()));
    let us_pcap = d.join("us-vlan.pcap");
    write_pcap(
        &us_pcap,
        TsResolution::MicroSecond,
        Endianness::Big,
        DataLink::ETHERNET,
        &frames,
    );
    files.push((us_pcap, false));

    // pcap-file: ns, little-endian, Linux cooked v2 carrying IPv6.
    let frames: Vec<(u64, Vec<u8>)> = c
        .datagrams
        .iter()
        .map(|(ts, p)| (*ts, ipv6_sll2(p)))
        .collect();
    let sll2 = d.join("ns-sll2.pcap");
    write_pcap(
        &sll2,
        TsResolution::NanoSecond,
        Endianness::Little,
        DataLink::LINUX_SLL2,
        &frames,
    );
    files.push((sll2, true));

    // pcap-file pcapng: two interfaces, Ethernet with if_tsresol=9 and raw IPv4
    // with the default (µs), packets alternating between them.
    let ng = d.join("two-interfaces.pcapng");
    {
        let mut w = PcapNgWriter::new(File::create(&ng).unwrap()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfTsResol(9)],
        })
        .unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock::new(DataLink::IPV4, 0))
            .unwrap();
        for (i, (ts, p)) in c.datagrams.iter().enumerate() {
            let (interface_id, units, frame) = if i.is_multiple_of(2) {
                (0, *ts, udp_frame(src(), dst(), p).unwrap())
            } else {
                (1, ts / 1_000, raw_ipv4(p))
            };
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id,
                // pcap-file writes the Duration's nanoseconds as raw units.
                timestamp: Duration::from_nanos(units),
                original_len: frame.len() as u32,
                data: Cow::Borrowed(&frame),
                options: vec![],
            })
            .unwrap();
        }
    }
    files.push((ng, false));

    // Wireshark's editcap and tcpdump rewriting the recorder's file.
    let edited = d.join("editcap.pcapng");
    run_tool(
        "editcap",
        &[
            "-F",
            "pcapng",
            own.to_str().unwrap(),
            edited.to_str().unwrap(),
        ],
    );
    assert_eq!(&fs::read(&edited).unwrap()[..4], &[0x0a, 0x0d, 0x0d, 0x0a]);
    files.push((edited, true));
    let rewritten = d.join("tcpdump.pcap");
    run_tool(
        "tcpdump",
        &[
            "-r",
            own.to_str().unwrap(),
            "-w",
            rewritten.to_str().unwrap(),
        ],
    );
    files.push((rewritten, false));

    for (file, ns) in &files {
        let loaded = load_feed(file).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(payloads_at_us(&loaded), expected_us, "{}", file.display());
        if *ns {
            let exact: Vec<(u64, Vec<u8>)> = loaded
                .packets
                .iter()
                .map(|p| (p.ts_ns, p.payload.clone()))
                .collect();
            assert_eq!(exact, expected_ns, "{}", file.display());
        }
        let name = file.to_str().unwrap();
        assert_eq!(
            load_feed_bytes(name, &fs::read(file).unwrap()).unwrap(),
            loaded
        );
        assert_eq!(
            loaded.skipped.get("heartbeat/control"),
            Some(&1),
            "{}",
            file.display()
        );
        assert_eq!(
            loaded.skipped.get("not a feed packet"),
            Some(&1),
            "{}",
            file.display()
        );
    }
    let with_tcp = load_feed(&files[1].0).unwrap();
    assert_eq!(with_tcp.skipped.get("not UDP"), Some(&1));
    assert_eq!(with_tcp.total_records, c.datagrams.len() as u64 + 1);
}

#[test]
fn packets_are_ordered_deduplicated_and_scheduled_monotonically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recovered.pcap");
    let p = |s: &str, seq: u64| data_packet(s, seq, &[trade(seq, 50)]);
    let records: Vec<(u64, Vec<u8>)> = vec![
        (100, p("A", 1)),
        (200, p("A", 2)),
        (400, p("A", 4)),
        (500, p("A", 5)),
        (450, p("B", 1)),
        (900, p("A", 3)), // recovered late
        (950, p("A", 2)), // duplicate
        (960, heartbeat("A", 6)),
        (1_000, p("B", 2)),
    ];
    let frames: Vec<(u64, Vec<u8>)> = records
        .iter()
        .map(|(ts, payload)| (*ts, udp_frame(src(), dst(), payload).unwrap()))
        .collect();
    write_pcap(
        &path,
        TsResolution::NanoSecond,
        Endianness::Little,
        DataLink::ETHERNET,
        &frames,
    );

    let loaded = load_feed(&path).unwrap();
    let got: Vec<(u64, Vec<u8>)> = loaded
        .packets
        .iter()
        .map(|p| (p.ts_ns, p.payload.clone()))
        .collect();
    let want = vec![
        (100, p("A", 1)),
        (200, p("A", 2)),
        // min(900, all later) = 400: the recovered packet goes out before seq 4.
        (400, p("A", 3)),
        (400, p("A", 4)),
        // Sessions in order of first appearance: B after A, so A5 is pulled to B1.
        (450, p("A", 5)),
        (450, p("B", 1)),
        (1_000, p("B", 2)),
    ];
    assert_eq!(got, want);
    assert!(loaded.packets.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
    assert_eq!(loaded.skipped.get("duplicate"), Some(&1));
    assert_eq!(loaded.skipped.get("heartbeat/control"), Some(&1));
    assert_eq!(loaded.total_records, 9);
    // The duplicate kept is the first copy: its time was 200, not 950.
    assert_eq!(loaded.packets[1].ts_ns, 200);

    let latencies = original_latency(&loaded);
    assert_eq!(latencies, vec![50, 150, 350, 350, 400, 400, 950]);
}

#[test]
fn original_latency_skips_trades_sent_after_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("skew.pcap");
    let payload = data_packet("A", 1, &[trade(1, 900), trade(2, 1_000), trade(3, 1_200)]);
    let frame = udp_frame(src(), dst(), &payload).unwrap();
    write_pcap(
        &path,
        TsResolution::NanoSecond,
        Endianness::Little,
        DataLink::ETHERNET,
        &[(1_000, frame)],
    );
    assert_eq!(original_latency(&load_feed(&path).unwrap()), vec![100, 0]);
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let tcp = d.join("tcp-only.pcap");
    let frames: Vec<(u64, Vec<u8>)> = (0..120).map(|i| (T0 + i, tcp_frame())).collect();
    write_pcap(
        &tcp,
        TsResolution::MicroSecond,
        Endianness::Little,
        DataLink::ETHERNET,
        &frames,
    );
    let err = load_feed(&tcp).unwrap_err();
    assert!(matches!(err, RecordingError::NoFeedPackets { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{} holds no ticklab feed packets: 120 records read, 120 not UDP",
            tcp.display()
        )
    );

    let control = d.join("control.pcap");
    let frames: Vec<(u64, Vec<u8>)> = [heartbeat("S1", 1), b"xyz".to_vec(), b"abc".to_vec()]
        .iter()
        .map(|p| (T0, udp_frame(src(), dst(), p).unwrap()))
        .collect();
    write_pcap(
        &control,
        TsResolution::NanoSecond,
        Endianness::Little,
        DataLink::ETHERNET,
        &frames,
    );
    assert_eq!(
        load_feed(&control).unwrap_err().to_string(),
        format!(
            "{} holds no ticklab feed packets: 3 records read, 1 heartbeat/control, 2 not a feed packet",
            control.display()
        )
    );

    let missing = d.join("nope.pcap");
    let err = load_feed(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot open {}:", missing.display())),
        "{err}"
    );

    let text = d.join("notes.txt");
    fs::write(&text, "hello").unwrap();
    let err = load_feed(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{}: not a pcap, pcapng or JSON-lines",
            text.display()
        )),
        "{err}"
    );

    let err = load_feed_bytes("download.pcap", &fs::read(&tcp).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("download.pcap holds no ticklab feed packets"),
        "{err}"
    );

    let empty = d.join("empty.pcap");
    fs::write(&empty, "").unwrap();
    assert_eq!(
        load_feed(&empty).unwrap_err().to_string(),
        format!("{}: empty file", empty.display())
    );
}

#[test]
fn a_torn_capture_keeps_what_precedes_the_tear() {
    let dir = tempfile::tempdir().unwrap();
    let c = capture();
    let own = ns_ethernet_pcap_by_writer(dir.path(), &c);
    let bytes = fs::read(&own).unwrap();
    let torn = dir.path().join("torn.pcap");
    fs::write(&torn, &bytes[..bytes.len() - 3]).unwrap();
    let loaded = load_feed(&torn).unwrap();
    assert_eq!(loaded.packets.len(), c.data.len() - 1);
    assert_eq!(
        loaded.skipped.get("unreadable record (reading stopped)"),
        Some(&1)
    );
}

/// Loads `bytes` as a capture; only a panic fails.
fn load_bytes(bytes: &[u8]) {
    let _ = load_feed_bytes("fuzz", bytes);
}

fn valid_files() -> Vec<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let c = capture();
    let pcap = ns_ethernet_pcap_by_writer(dir.path(), &c);
    let ng = dir.path().join("x.pcapng");
    run_tool(
        "editcap",
        &["-F", "pcapng", pcap.to_str().unwrap(), ng.to_str().unwrap()],
    );
    let mut w =
        RecordingWriter::open(WriterConfig::new(dir.path().join("j"), Format::Jsonl)).unwrap();
    for (ts, p) in c.data.iter().take(3) {
        w.write_packet(*ts, src(), dst(), p).unwrap();
    }
    let jsonl = w.current_file().unwrap().to_path_buf();
    w.close().unwrap();
    [pcap, ng, jsonl]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect()
}

#[test]
fn truncated_files_never_panic() {
    for bytes in valid_files() {
        // Every cut in the first records, then every 7th byte.
        for len in (0..bytes.len()).filter(|l| *l < 200 || l.is_multiple_of(7)) {
            load_bytes(&bytes[..len]);
        }
    }
}

fn magic() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![0xa1, 0xb2, 0xc3, 0xd4]),
        Just(vec![0xd4, 0xc3, 0xb2, 0xa1]),
        Just(vec![0xa1, 0xb2, 0x3c, 0x4d]),
        Just(vec![0x4d, 0x3c, 0xb2, 0xa1]),
        Just(vec![0x0a, 0x0d, 0x0d, 0x0a]),
        Just(vec![
            0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a
        ]),
        Just(b"{".to_vec()),
        Just(vec![]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(prefix in magic(), rest in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = prefix;
        bytes.extend_from_slice(&rest);
        load_bytes(&bytes);
    }

    #[test]
    fn corrupted_files_never_panic(which in 0usize..3, flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        thread_local! {
            static FILES: Vec<Vec<u8>> = valid_files();
        }
        let mut bytes = FILES.with(|f| f[which].clone());
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        load_bytes(&bytes);
    }
}
