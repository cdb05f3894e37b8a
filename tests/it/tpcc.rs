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
