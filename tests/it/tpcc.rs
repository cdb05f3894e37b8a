//! `acre bench tpcc`'s bad input: one line on stderr and exit code 2, before anything is
//! loaded. (The driver, the backends and the checks are tested in acre-benches' own tests,
//! against the in-memory model, an embedded cluster and a PostgreSQL server.)

use crate::cluster::{acre, text};

#[test]
fn bad_tpcc_input_gets_one_line_and_exit_code_2() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let unreachable = format!("postgres://postgres@127.0.0.1:{closed_port}/postgres");
    for (args, says) in [
        (vec!["--warehouses", "0"], "warehouses must be at least 1"),
        (vec!["--threads", "0"], "threads must be at least 1"),
        (
            vec!["--duration", "0s"],
            "duration must be longer than zero",
        ),
        (vec!["--duration", "soon"], "not a duration"),
        (vec!["--target", "redis://127.0.0.1:6379"], "unknown target"),
        (vec!["--target", "acre:"], "needs a directory"),
        (
            vec!["--target", "acre:/dev/shm/acre-test-no-such-tpcc-cluster"],
            "no cluster at",
        ),
        (vec!["--target", &unreachable], "cannot connect to postgres"),
        (vec!["--isolation", "snapshot"], "unknown isolation"),
        // Ten thousand warehouses need terabytes: refused before any memory is taken.
        (vec!["--warehouses", "10000"], "MiB available"),
    ] {
        let mut command = vec!["bench", "tpcc", "--warmup", "0s"];
        command.extend(args.iter().copied());
        let output = acre(&command);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}: {}", text(&output));
    }
}

/// Against a cluster whose CM adds regions (`acre cluster up` with its default CM) the load is
/// not refused for want of regions: one warehouse (about 160 MiB) loads into three regions of
/// 32 MiB, the CM adds regions as the load fills them, and the run's consistency checks hold.
/// A warehouse count whose replicas would not fit in the cluster directory's file system is
/// refused before anything is loaded, with the memory it needs. A second load into the cluster,
/// which now holds the first one's objects, is refused.
#[test]
fn a_load_into_a_cluster_with_a_cm_grows_its_regions() {
    let dir = format!("/dev/shm/acre-test-tpcc-grow-{}", std::process::id());
    let up = acre(&[
        "cluster",
        "up",
        "--dir",
        &dir,
        "--nodes",
        "3",
        "--f",
        "1",
        "--region-bytes",
        "33554432",
        "--ring-bytes",
        "1048576",
    ]);
    struct Down(String);
    impl Drop for Down {
        fn drop(&mut self) {
            let _ = acre(&["cluster", "down", "--dir", &self.0, "--purge"]);
        }
    }
    let _down = Down(dir.clone());
    assert!(up.status.success(), "{}", text(&up));
    let target = format!("acre:{dir}");
    let refused = acre(&[
        "bench",
        "tpcc",
        "--target",
        &target,
        "--warehouses",
        "10000",
        "--warmup",
        "0s",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("MiB free"), "{}", text(&refused));

    let run = acre(&[
        "bench",
        "tpcc",
        "--target",
        &target,
        "--warehouses",
        "1",
        "--threads",
        "2",
        "--warmup",
        "0s",
        "--duration",
        "2s",
    ]);
    assert!(run.status.success(), "{}", text(&run));
    let status = acre::cluster::CmStatusFile::read(std::path::Path::new(&dir))
        .expect("read the CM status")
        .expect("a CM status");
    assert!(
        status.committed.regions.len() > 3,
        "no region was added: {status:?}"
    );
    assert!(
        status
            .history
            .iter()
            .any(|r| r.cause.starts_with("new region") && r.outcome == "committed"),
        "{status:?}"
    );

    let again = acre(&[
        "bench", "tpcc", "--target", &target, "--warmup", "0s", "--flush",
    ]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already holds objects"), "{stderr}");
}
