//! `mpiexec -n N balora-collective-selftest [ok|exit|abort] [mpi|nccl]`: runs every operation of
//! the world collective and checks the results (`ok`), or makes rank 1 leave in the middle of a
//! job while the others wait in an all-reduce: `exit` (exit status 1 without MPI_Finalize),
//! `abort` (`Collective::abort(3)`). `nccl` (feature `nccl`) reduces the f32 buffers with NCCL on
//! each rank's CUDA device. Used by tests/mpi.rs and tools/gpu/ddp_check.sh.

use balora_collective::init_world;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "ok".into());
    let nccl = std::env::args().nth(2).as_deref() == Some("nccl");
    let c = init_world(nccl).unwrap_or_else(|e| {
        eprintln!("selftest: {e}");
        std::process::exit(2)
    });
    let (r, n) = (c.rank(), c.world_size());
    if r == 1 && mode == "exit" {
        eprintln!("selftest: rank 1 exits with status 1");
        std::process::exit(1);
    }
    if r == 1 && mode == "abort" {
        eprintln!("selftest: rank 1 aborts");
        c.abort(3);
    }
    let mut f = vec![r as f32 + 0.5; 5];
    c.all_reduce_sum_f32(&mut f).unwrap();
    let want = (0..n).map(|k| k as f32 + 0.5).sum::<f32>();
    assert!(f.iter().all(|&x| x == want), "{f:?} != {want}");
    let mut d = vec![1.0f64, r as f64];
    c.all_reduce_sum_f64(&mut d).unwrap();
    assert_eq!(d, [n as f64, (n * (n - 1) / 2) as f64]);
    let mut b = if r == n - 1 {
        b"from the last rank".to_vec()
    } else {
        Vec::new()
    };
    c.broadcast_bytes(n - 1, &mut b).unwrap();
    assert_eq!(b, b"from the last rank");
    c.barrier().unwrap();
    let hashes = c.all_gather_hash([r as u8; 32]).unwrap();
    assert_eq!(hashes, (0..n).map(|k| [k as u8; 32]).collect::<Vec<_>>());
    // A long buffer (several NCCL chunks), exact in f32: small integers.
    let mut big: Vec<f32> = (0..1_000_003)
        .map(|i| ((i % 1000) * (r + 1)) as f32)
        .collect();
    c.all_reduce_sum_f32(&mut big).unwrap();
    let tri = (n * (n + 1) / 2) as f32;
    assert!(big
        .iter()
        .enumerate()
        .all(|(i, &x)| x == (i % 1000) as f32 * tri));
    println!(
        "selftest rank {r}/{n} ({}, local rank {} of {}): ok",
        c.name(),
        c.local_rank(),
        c.local_size()
    );
    balora_collective::finalize();
}
