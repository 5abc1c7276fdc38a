//! Times the parts of a backward pass separately (grad input, grad weight), for profiling:
//! `bwd_parts N C H W K k stride pad dil groups runs [forward|input|weight|both]`.
use convkit::backward::backward;
use convkit::plan::Algo;
use convkit::{ConvSpec, GradRequest};
use ndarray::Array4;
use std::time::Instant;

/// CPU nanoseconds used so far by every thread of this process (Linux `schedstat`).
fn cpu_ns() -> u64 {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.filter_map(|e| {
                let text = std::fs::read_to_string(e.ok()?.path().join("schedstat")).ok()?;
                text.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
        })
        .unwrap_or(0)
}

/// Median wall ms and median CPU ms of `runs` calls of `f`.
fn time(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (t, c) = (Instant::now(), cpu_ns());
        f();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.push((cpu_ns() - c) as f64 * 1e-6);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    (med(&mut wall), med(&mut cpu))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a: Vec<usize> = args[..11].iter().map(|s| s.parse().unwrap()).collect();
    // Optional 12th argument: run only this part (forward, input, weight, both).
    let only = args.get(11).cloned().unwrap_or_default();
    let part = |name: &str| only.is_empty() || name.starts_with(only.as_str());
    let (n, c, h, w, k, kk, s, p, d, g, runs) = (
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10],
    );
    // TRANSPOSED=1 in the environment times the transposed layer instead.
    let spec = if std::env::var_os("TRANSPOSED").is_some() {
        ConvSpec::conv_transpose2d(c, k, kk)
    } else {
        ConvSpec::conv2d(c, k, kk)
    };
    let spec = spec
        .stride(s)
        .padding(p)
        .dilation(d)
        .groups(g)
        .build()
        .unwrap();
    let geom = spec.geometry([n, c, h, w]).unwrap();
    let x = Array4::<f32>::from_elem((n, c, h, w), 0.5);
    let wt = Array4::<f32>::from_elem(spec.weight_shape(), 0.01);
    let dy = Array4::<f32>::from_elem(geom.output_shape(), 0.1);
    if part("forward") {
        let (wall, cpu) = time(runs, || {
            convkit::plan::forward(&spec, x.view(), wt.view(), None, Algo::Auto).unwrap();
        });
        println!("forward: median {wall:.3} ms, cpu {cpu:.3} ms");
    }
    for (name, want) in [
        (
            "grad input",
            GradRequest {
                input: true,
                ..Default::default()
            },
        ),
        (
            "grad weight",
            GradRequest {
                weight: true,
                ..Default::default()
            },
        ),
        (
            "both",
            GradRequest {
                input: true,
                weight: true,
                ..Default::default()
            },
        ),
    ] {
        if !part(name.trim_start_matches("grad ")) {
            continue;
        }
        let (wall, cpu) = time(runs, || {
            backward(&spec, x.view(), wt.view(), dy.view(), want, Algo::Auto).unwrap();
        });
        println!("{name}: median {wall:.3} ms, cpu {cpu:.3} ms");
    }
}
