//! convkit's image filters against OpenCV 5 golden data (`scripts/gen_filter_golden.py`):
//! filter2D, sepFilter2D, Sobel, Scharr, Laplacian, GaussianBlur, boxFilter / blur over every
//! border mode, odd / even / tiny images, gray, RGB and float, u8 and f32 outputs.

use convkit::filter::{
    saturate_u8, Depth, FilterBorder, FilterOp, FilterOptions, FilterPlan, Image, Kernel,
    KernelSpec, PathChoice,
};
use serde_json::Value;

fn golden() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/filter/golden.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("golden file")).expect("json")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

#[test]
fn filters_match_opencv() {
    let doc = golden();
    let mut checked = 0;
    for img in doc["images"].as_array().expect("images") {
        let name = img["name"].as_str().expect("name");
        let shape: Vec<usize> = floats(&img["shape"]).iter().map(|&v| v as usize).collect();
        let (h, w, c) = (shape[0], shape[1], shape[2]);
        let data = floats(&img["data"]);
        let is_u8 = img["dtype"] == "u8";
        let depth = if is_u8 { Depth::U8 } else { Depth::F32 };
        let px8: Vec<u8> = data.iter().map(|&v| v as u8).collect();
        let pxf: Vec<f32> = data.iter().map(|&v| v as f32).collect();
        let max_x = data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for case in img["cases"].as_array().expect("cases") {
            let op_name = case["op"].as_str().expect("op");
            let border = FilterBorder::parse(case["border"].as_str().expect("border")).unwrap();
            let op = match case.get("spec") {
                Some(s) => KernelSpec::parse(s.as_str().unwrap())
                    .unwrap()
                    .resolve(depth)
                    .unwrap(),
                None => {
                    let rows: Vec<Vec<f64>> = case["kernel"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(floats)
                        .collect();
                    let (r, cc) = (rows.len(), rows[0].len());
                    FilterOp::Linear(Kernel::new(r, cc, rows.concat()).unwrap())
                }
            };
            let FilterOp::Linear(k) = &op else {
                panic!("golden cases are linear")
            };
            let sum_abs: f64 = k.data().iter().map(|v| v.abs()).sum();
            let expected = floats(&case["expected"]);
            let tol = case["tol"].as_f64().unwrap();
            for path in [PathChoice::Auto, PathChoice::Direct] {
                let opts = FilterOptions {
                    border,
                    path,
                    ..Default::default()
                };
                let plan = FilterPlan::new(&op, &opts).unwrap();
                let got = if is_u8 {
                    plan.run_alloc(&Image::new(&px8, w, h, c).unwrap())
                } else {
                    plan.run_alloc(&Image::new(&pxf, w, h, c).unwrap())
                }
                .unwrap();
                let what = format!("{name} / {op_name} / {} / {path:?}", case["border"]);
                assert_eq!(got.len(), expected.len(), "{what}");
                if case["dtype"] == "u8" {
                    for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                        let g = saturate_u8(g) as f64;
                        assert!(
                            (g - e).abs() <= tol,
                            "{what}: index {i}: convkit {g}, OpenCV {e} (tolerance {tol})"
                        );
                    }
                } else {
                    let abs = 2e-6 * (1.0 + sum_abs * max_x);
                    for (i, (&g, &e)) in got.iter().zip(&expected).enumerate() {
                        assert!(
                            (g as f64 - e).abs() <= abs.max(tol),
                            "{what}: index {i}: convkit {g}, OpenCV {e}"
                        );
                    }
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 800, "only {checked} cases checked");
}
