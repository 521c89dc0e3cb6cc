//! The writer and the index from the outside: files tshark and tcpdump decode,
//! rotation by size and age, torn tails repaired after a crash (a real SIGKILL
//! included), the rebuilt index equal to the written one, JSON lines round trips.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use ticklab_recording::{
    Format, Index, RecordingError, RecordingWriter, WriterConfig, format_table, load_feed,
};
use ticklab_wire::{FeedPacket, Message};

fn config(dir: &Path, format: Format) -> WriterConfig {
    let mut c = WriterConfig::new(dir, format);
    c.prefix = "feed".into();
    c
}

fn write_all(w: &mut RecordingWriter, packets: &[(u64, Vec<u8>)]) {
    for (ts, p) in packets {
        w.write_packet(*ts, src(), dst(), p).unwrap();
    }
}

fn recordings(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".pcap") || n.ends_with(".jsonl"))
        .collect();
    names.sort();
    names
}

#[test]
fn pcap_decodes_in_tshark_and_tcpdump() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    let mut packets = feed(40);
    let last = packets.last().unwrap().0;
    packets.insert(10, (T0 + 10, heartbeat("S1", 20)));
    packets.insert(20, (T0 + 20, b"not a feed packet".to_vec()));
    packets.push((last + 1, vec![0xff; 3]));
    packets.push((last + 2, end_of_session("S1", 81)));
    write_all(&mut w, &packets);
    let name = w.current_file().unwrap().to_path_buf();
    w.close().unwrap();

    let rows = tshark_fields(
        &name,
        &[
            "frame.len",
            "udp.dstport",
            "ip.checksum.status",
            "udp.checksum.status",
        ],
    );
    assert_eq!(rows.len(), packets.len());
    for (row, (_, payload)) in rows.iter().zip(&packets) {
        let len = (42 + payload.len()).to_string();
        // Checksum status 1 = good.
        assert_eq!(row, &[len.as_str(), "5000", "1", "1"]);
    }
    let dump = run_tool("tcpdump", &["-nn", "-r", name.to_str().unwrap()]);
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), packets.len(), "{dump}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("10.1.0.1.40000 > 239.1.2.3.5000: UDP")),
        "{dump}"
    );

    let index = Index::read(dir.path()).unwrap();
    assert_eq!(index.files.len(), 1);
    let entry = &index.files[0];
    let trades: u64 = (0..40).map(|i| 1 + i % 3).sum();
    assert_eq!(entry.packets, packets.len() as u64);
    assert_eq!(entry.other_packets, 2);
    assert_eq!(entry.trades, trades);
    assert_eq!((entry.first_seq, entry.last_seq), (Some(1), Some(trades)));
    assert_eq!(entry.sessions, vec!["S1".to_string()]);
    assert_eq!(entry.bytes, fs::metadata(&name).unwrap().len());
    assert_eq!((entry.start_ns, entry.end_ns), (Some(T0), Some(last + 2)));
    assert!(entry.complete);
    assert!(
        entry.name.starts_with("feed-20240501T123456.000000000Z-"),
        "{}",
        entry.name
    );
}

#[test]
fn rotates_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Format::Pcap);
    // Packets of one trade: 64-byte payload, 106-byte frame, 122-byte record.
    let packets: Vec<(u64, Vec<u8>)> = (0..10)
        .map(|i| (T0 + i, data_packet("S1", 1 + i, &[trade(i, T0)])))
        .collect();
    c.max_bytes = 24 + 3 * 122;
    let mut w = RecordingWriter::open(c).unwrap();
    write_all(&mut w, &packets);
    w.close().unwrap();

    let names = recordings(dir.path());
    assert_eq!(names.len(), 4, "{names:?}");
    let index = Index::read(dir.path()).unwrap();
    let counts: Vec<u64> = index.files.iter().map(|f| f.packets).collect();
    assert_eq!(counts, vec![3, 3, 3, 1]);
    assert_eq!(
        index
            .files
            .iter()
            .map(|f| f.name.clone())
            .collect::<Vec<_>>(),
        names
    );
    for f in &index.files {
        assert!(f.bytes <= 24 + 3 * 122 && f.complete);
        assert_eq!(
            f.bytes,
            fs::metadata(dir.path().join(&f.name)).unwrap().len()
        );
    }
    let seqs: Vec<(Option<u64>, Option<u64>)> = index
        .files
        .iter()
        .map(|f| (f.first_seq, f.last_seq))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (Some(1), Some(3)),
            (Some(4), Some(6)),
            (Some(7), Some(9)),
            (Some(10), Some(10))
        ]
    );
    // The counter keeps names unique and sorted even within one nanosecond.
    assert!(names[0].ends_with("-000001.pcap") && names[3].ends_with("-000004.pcap"));
    let t = index.totals();
    assert_eq!((t.files, t.packets, t.trades), (4, 10, 10));
}

#[test]
fn rotates_by_age_on_tick_and_on_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), Format::Pcap);
    c.max_age = Duration::from_secs(1);
    let mut w = RecordingWriter::open(c).unwrap();
    let sec = 1_000_000_000;
    let p = |seq| data_packet("S1", seq, &[trade(seq, T0)]);
    w.write_packet(T0, src(), dst(), &p(1)).unwrap();
    w.write_packet(T0 + sec / 2, src(), dst(), &p(2)).unwrap();
    w.tick(T0 + sec - 1).unwrap();
    assert!(w.current_file().is_some(), "closed too early");
    // Idle: the tick closes it.
    w.tick(T0 + sec).unwrap();
    assert!(w.current_file().is_none());
    assert!(w.index().files.last().unwrap().complete);
    // The next packet opens a new file; one past max_age rotates on the write.
    w.write_packet(T0 + 5 * sec, src(), dst(), &p(3)).unwrap();
    w.write_packet(T0 + 6 * sec + 1, src(), dst(), &p(4))
        .unwrap();
    w.close().unwrap();

    let index = Index::read(dir.path()).unwrap();
    let counts: Vec<u64> = index.files.iter().map(|f| f.packets).collect();
    assert_eq!(counts, vec![2, 1, 1]);
    assert!(
        index.files[1].name.contains("T123501.000000000Z"),
        "{}",
        index.files[1].name
    );
}

#[test]
fn pause_splits_files_and_unrecoverable_ranges_are_merged() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    // Before any file: kept for the first one.
    w.mark_unrecoverable(1, 2);
    let p = |seq| data_packet("S1", seq, &[trade(seq, T0)]);
    w.write_packet(T0, src(), dst(), &p(3)).unwrap();
    w.mark_unrecoverable(10, 5);
    w.mark_unrecoverable(15, 1);
    w.mark_unrecoverable(5, 0);
    w.pause().unwrap();
    assert!(w.current_file().is_none());
    // While paused, the range goes to the most recent file.
    w.mark_unrecoverable(20, 1);
    w.flush().unwrap();
    w.write_packet(T0 + 100, src(), dst(), &p(30)).unwrap();
    w.mark_unrecoverable(31, 3);
    w.close().unwrap();

    let index = Index::read(dir.path()).unwrap();
    assert_eq!(index.files.len(), 2);
    assert_eq!(index.files[0].missing, vec![[1, 2], [10, 15], [20, 20]]);
    assert_eq!(index.files[1].missing, vec![[31, 33]]);
    let table = format_table(&index);
    assert!(table.contains("1-2,10-15,20"), "{table}");
    assert!(
        table.ends_with("2 files, 2 packets, 2 trades, 292 bytes, 12 sequence numbers missing\n"),
        "{table}"
    );

    // A new run's ranges wait for its own first file, not the last run's.
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    w.mark_unrecoverable(40, 1);
    w.flush().unwrap();
    assert_eq!(
        Index::read(dir.path()).unwrap().files[1].missing,
        vec![[31, 33]]
    );
    w.write_packet(T0 + 200, src(), dst(), &p(41)).unwrap();
    assert_eq!(w.index().files[2].missing, vec![[40, 40]]);
    w.close().unwrap();
}

#[test]
fn rebuilt_index_equals_written_index() {
    for format in [Format::Pcap, Format::Jsonl] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path(), format);
        c.max_bytes = 2_000;
        let mut w = RecordingWriter::open(c).unwrap();
        let mut packets = feed(60);
        packets.insert(5, (T0 + 5, heartbeat("S1", 9)));
        packets.insert(7, (T0 + 7, b"junk".to_vec()));
        packets.insert(
            55,
            (T0 + 999_999_999, data_packet("S2", 1, &[trade(1, T0)])),
        );
        write_all(&mut w, &packets);
        w.mark_unrecoverable(7, 2);
        w.flush().unwrap();

        // While the writer is open (flushed): only the open file's flag differs.
        let written = w.index().clone();
        assert!(written.files.len() > 2, "{format:?}: no rotation");
        let mut rebuilt = Index::load_or_rebuild(dir.path()).unwrap();
        assert!(rebuilt.repaired.is_empty() && rebuilt.ignored.is_empty());
        rebuilt.files.last_mut().unwrap().complete = false;
        assert_eq!(rebuilt.files, written.files, "{format:?}");

        w.close().unwrap();
        let stored = Index::read(dir.path()).unwrap();
        let rebuilt = Index::load_or_rebuild(dir.path()).unwrap();
        assert_eq!(rebuilt.files, stored.files, "{format:?}");
        let sessions: Vec<&Vec<String>> = stored.files.iter().map(|f| &f.sessions).collect();
        assert!(
            sessions.contains(&&vec!["S1".to_string(), "S2".to_string()]),
            "{format:?}: {sessions:?}"
        );

        // Without index.json only the missing ranges are lost.
        fs::remove_file(dir.path().join("index.json")).unwrap();
        let mut scanned = Index::read(dir.path()).unwrap();
        scanned.files.last_mut().unwrap().missing = vec![[7, 8]];
        assert_eq!(scanned.files, stored.files, "{format:?}");
    }
}

#[test]
fn torn_pcap_tail_is_repaired_and_tshark_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    let packets = feed(12);
    write_all(&mut w, &packets);
    w.close().unwrap();
    let name = recordings(dir.path()).remove(0);
    let path = dir.path().join(&name);
    let full = fs::metadata(&path).unwrap().len();
    let last_record = 16 + 42 + packets[11].1.len() as u64;

    let second_last = 16 + 42 + packets[10].1.len() as u64;
    // Cut inside the last record's data, then (second round) inside the header of
    // what is then the last record.
    let cuts = [(full - 7, 11), (full - last_record - second_last + 5, 10)];
    for (cut_to, complete) in cuts {
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(cut_to).unwrap();
        drop(f);
        let index = Index::load_or_rebuild(dir.path()).unwrap();
        let dropped = index.repaired.iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(dropped > 0);
        assert_eq!(index.files[0].packets, complete);
        assert_eq!(fs::metadata(&path).unwrap().len(), cut_to - dropped);
        assert_eq!(index.files[0].bytes, cut_to - dropped);
        let rows = tshark_fields(&path, &["frame.len"]);
        assert_eq!(rows.len() as u64, complete);
    }
    // A second rebuild finds nothing left to repair.
    assert!(
        Index::load_or_rebuild(dir.path())
            .unwrap()
            .repaired
            .is_empty()
    );
}

#[test]
fn torn_jsonl_tail_and_headerless_pcap_are_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordingWriter::open(config(dir.path(), Format::Jsonl)).unwrap();
    write_all(&mut w, &feed(5));
    w.close().unwrap();
    let name = recordings(dir.path()).remove(0);
    let path = dir.path().join(&name);
    let text = fs::read_to_string(&path).unwrap();
    let lines = text.lines().count() as u64;
    fs::write(&path, &text[..text.len() - 10]).unwrap();
    // A pcap whose writer died before its header reached the disk.
    fs::write(
        dir.path()
            .join("feed-20240501T000000.000000000Z-000099.pcap"),
        b"\xd4\xc3",
    )
    .unwrap();
    fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
    fs::write(dir.path().join("foreign.pcap"), [7u8; 40]).unwrap();

    let index = Index::load_or_rebuild(dir.path()).unwrap();
    let mut repaired = index.repaired.clone();
    repaired.sort();
    assert_eq!(repaired.len(), 2, "{repaired:?}");
    assert_eq!(
        repaired[1],
        (
            name.clone(),
            text.lines().last().unwrap().len() as u64 + 1 - 10
        )
    );
    assert_eq!(index.ignored.len(), 1, "{:?}", index.ignored);
    assert_eq!(index.ignored[0].0, "foreign.pcap");
    let jsonl = index.find(&name).unwrap();
    assert_eq!(jsonl.packets, lines - 1);
    assert!(fs::read_to_string(&path).unwrap().ends_with("}\n"));
    let empty = index
        .find("feed-20240501T000000.000000000Z-000099.pcap")
        .unwrap();
    assert_eq!((empty.packets, empty.bytes), (0, 24));
    run_tool(
        "tshark",
        &["-r", dir.path().join(&empty.name).to_str().unwrap()],
    );

    // A writer opened on the directory continues the counter in a new file.
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    w.write_packet(T0, src(), dst(), &feed(1)[0].1).unwrap();
    let current = w
        .current_file()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(current.ends_with("-000100.pcap"), "{current}");
    w.close().unwrap();
}

#[test]
fn second_writer_on_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    let err = RecordingWriter::open(config(dir.path(), Format::Pcap))
        .err()
        .unwrap();
    assert!(matches!(err, RecordingError::Locked { .. }), "{err}");
    assert!(err.to_string().contains(".lock"), "{err}");
    drop(w);
    RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    let mut bad = config(dir.path(), Format::Pcap);
    bad.prefix = "../x".into();
    assert!(matches!(
        RecordingWriter::open(bad),
        Err(RecordingError::BadPrefix(_))
    ));
}

#[test]
fn jsonl_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = RecordingWriter::open(config(dir.path(), Format::Jsonl)).unwrap();
    let mut packets = feed(20);
    packets.insert(3, (T0 + 3, heartbeat("S1", 7)));
    packets.insert(4, (T0 + 4, b"garbage".to_vec()));
    write_all(&mut w, &packets);
    w.close().unwrap();
    let name = recordings(dir.path()).remove(0);
    let path = dir.path().join(&name);
    let text = fs::read_to_string(&path).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            r#"{{"session":"S1","seq":1,"tradeId":2,"symbol":"EURUSD","price":"1.08345014","quantity":"0.50000002","side":"buy","sendTsNs":{},"recvTsNs":{T0}}}"#,
            T0 - 2_500
        )
    );

    let expected: Vec<(u64, u64, ticklab_wire::Trade)> = packets
        .iter()
        .filter_map(|(ts, p)| FeedPacket::parse(p).ok().map(|fp| (ts, fp)))
        .flat_map(|(ts, fp)| {
            fp.messages()
                .filter_map(|(seq, m)| match m {
                    Ok(Message::Trade(t)) => Some((*ts, seq, t)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(text.lines().count(), expected.len());
    let loaded = load_feed(&path).unwrap();
    assert_eq!(loaded.total_records, expected.len() as u64);
    let got: Vec<(u64, u64, ticklab_wire::Trade)> = loaded
        .packets
        .iter()
        .map(|p| {
            let fp = FeedPacket::parse(&p.payload).unwrap();
            let mut m = fp.messages();
            let (seq, Ok(Message::Trade(t))) = m.next().unwrap() else {
                panic!("not a trade")
            };
            assert!(m.next().is_none());
            (p.ts_ns, seq, t)
        })
        .collect();
    assert_eq!(got, expected);
}

const CHILD_READY: &str = "sigkill-child-ready";

/// The child half of `killed_writer_loses_only_unflushed_records`: does nothing
/// unless the parent started this test binary with the directory in the env.
#[test]
fn sigkill_child() {
    let Ok(dir) = std::env::var("TICKLAB_RECORDING_CHILD_DIR") else {
        return;
    };
    let mut w = RecordingWriter::open(config(Path::new(&dir), Format::Pcap)).unwrap();
    let packets = feed(300);
    write_all(&mut w, &packets[..200]);
    w.flush().unwrap();
    // Not flushed: lost with the process (or partly written, then torn).
    write_all(&mut w, &packets[200..]);
    println!("\n{CHILD_READY}");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn killed_writer_loses_only_unflushed_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TICKLAB_RECORDING_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The harness prints its own lines around the child's; wait for the marker,
    // but not forever.
    let out = BufReader::new(child.stdout.take().unwrap());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines() {
            let Ok(line) = line else { break };
            if line.trim() == CHILD_READY {
                let _ = ready_tx.send(());
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(30));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    assert!(ready.is_ok(), "the child writer never got ready");

    let before = Index::read(dir.path()).unwrap();
    assert!(
        !before.files[0].complete,
        "the index should show the file open"
    );
    let mut w = RecordingWriter::open(config(dir.path(), Format::Pcap)).unwrap();
    let entry = w.index().files[0].clone();
    assert!(entry.complete);
    assert!((200..=300).contains(&entry.packets), "{}", entry.packets);
    let path = dir.path().join(&entry.name);
    assert_eq!(
        tshark_fields(&path, &["frame.len"]).len() as u64,
        entry.packets
    );
    let loaded = load_feed(&path).unwrap();
    assert_eq!(loaded.packets.len() as u64, entry.packets);
    w.write_packet(T0, src(), dst(), &feed(1)[0].1).unwrap();
    w.close().unwrap();
    assert_eq!(Index::read(dir.path()).unwrap().files.len(), 2);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Any bytes in files named like recordings: the index neither panics nor
    /// gives up on the directory.
    #[test]
    fn rebuild_survives_garbage(pcap in proptest::collection::vec(any::<u8>(), 0..300),
                                jsonl in proptest::collection::vec(any::<u8>(), 0..300),
                                magic in 0usize..3) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = match magic {
            0 => 0xA1B2_3C4Du32.to_le_bytes().to_vec(),
            1 => 0xA1B2_C3D4u32.to_be_bytes().to_vec(),
            _ => Vec::new(),
        };
        bytes.extend_from_slice(&pcap);
        fs::write(dir.path().join("a.pcap"), &bytes).unwrap();
        fs::write(dir.path().join("b.jsonl"), &jsonl).unwrap();
        fs::write(dir.path().join("index.json"), &jsonl).unwrap();
        let read = Index::read(dir.path());
        let _ = read.map(|i| format_table(&i));
        let rebuilt = Index::load_or_rebuild(dir.path()).unwrap();
        let _ = format_table(&rebuilt);
    }

    /// Any payload is recorded without panicking, and the files stay readable.
    #[test]
    fn writer_takes_any_payload(payloads in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..200), 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        for format in [Format::Pcap, Format::Jsonl] {
            let mut w = RecordingWriter::open(config(&dir.path().join(format.extension()), format)).unwrap();
            for (i, p) in payloads.iter().enumerate() {
                w.write_packet(T0 + i as u64, src(), dst(), p).unwrap();
            }
            w.close().unwrap();
        }
        let index = Index::read(&dir.path().join("pcap")).unwrap();
        prop_assert_eq!(index.files[0].packets, payloads.len() as u64);
        prop_assert_eq!(index.files[0].other_packets, payloads.len() as u64);
    }
}
