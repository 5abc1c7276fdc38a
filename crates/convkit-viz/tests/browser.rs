//! End-to-end test of the interactive page in headless Chromium (Debian's `chromium` package),
//! driven over the DevTools protocol: load the page from `file://`, check that it drew, hover an
//! output cell and an input cell and check what lit up, save a screenshot; then check that the
//! SVG animates (its frame groups become visible in turn).
//!
//! Chromium is looked up at `$CONVKIT_CHROMIUM` or `/usr/bin/chromium`. Without it the test
//! fails when `CI=true` (CI installs it with `scripts/install-chromium.sh`) and is skipped with a
//! notice otherwise.

use convkit_viz::gallery::CONV_ARITHMETIC;
use convkit_viz::html::{html, HtmlOptions};
use convkit_viz::scene::{Rgb, INPUT, OUTPUT, SHADE, SHADE_ALPHA};
use convkit_viz::{build, CellRef};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

fn chromium() -> Option<PathBuf> {
    let p = std::env::var_os("CONVKIT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    p.is_file().then_some(p)
}

/// The browser process and its throw-away profile, both removed on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn launch(exe: &Path) -> (Browser, String) {
    let profile = std::env::temp_dir().join(format!(
        "convkit-viz-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_dir_all(&profile);
    std::fs::create_dir_all(&profile).unwrap();
    let mut child = Command::new(exe)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().unwrap();
    let browser = Browser { child, profile };
    // Chromium prints the DevTools address on stderr; keep draining it afterwards.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(i) = line.find("ws://") {
                let _ = tx.send(line[i..].trim().to_string());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("chromium did not print its DevTools address within 60 s");
    (browser, url)
}

/// A DevTools connection with one attached page session.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    fn connect(url: &str) -> Self {
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&hostport).expect("connect to DevTools");
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("DevTools handshake");
        Cdp {
            ws,
            next: 1,
            session: None,
        }
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next;
        self.next += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        loop {
            let m = self.ws.read().expect("DevTools reply");
            let Ok(text) = m.into_text() else { continue };
            let v: Value = match serde_json::from_str(text.as_str()) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {}", v["error"]);
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page and returns its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "script error in `{expr}`: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }
}

fn shaded(c: Rgb) -> Rgb {
    [0, 1, 2]
        .map(|i| (c[i] as f32 * (1.0 - SHADE_ALPHA) + SHADE[i] as f32 * SHADE_ALPHA).round() as u8)
}

#[track_caller]
fn assert_close(got: &Value, want: Rgb) {
    let got: Vec<i64> = serde_json::from_value(got.clone()).unwrap();
    assert!(
        got.iter().zip(want).all(|(a, b)| (a - b as i64).abs() <= 3),
        "pixel {got:?}, want {want:?}"
    );
}

fn cells(v: &Value) -> Vec<CellRef> {
    let mut c: Vec<CellRef> = serde_json::from_value(v.clone()).unwrap();
    c.sort_unstable();
    c.dedup();
    c
}

#[test]
fn interactive_page_draws_and_lights_hovered_relations() {
    let Some(exe) = chromium() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI=true but /usr/bin/chromium is missing: run scripts/install-chromium.sh first"
            );
        }
        eprintln!(
            "NOTICE: skipping the headless-browser test: no chromium at /usr/bin/chromium \
             (scripts/install-chromium.sh installs it; or set CONVKIT_CHROMIUM)"
        );
        return;
    };
    // padding_strides: 5×5 input padded by 1, 3×3 kernel, stride 2 → 3×3 output.
    let scene = build(&CONV_ARITHMETIC[5].direct().unwrap()).unwrap();
    let (ii, oi) = (
        scene.panel_index("input").unwrap(),
        scene.panel_index("output").unwrap(),
    );
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("viz-e2e");
    std::fs::create_dir_all(&out_dir).unwrap();
    let page = out_dir.join("padding_strides.html");
    std::fs::write(&page, html(&scene, &HtmlOptions::default()).unwrap()).unwrap();

    let (_browser, url) = launch(&exe);
    let mut cdp = Cdp::connect(&url);
    let target = cdp.call("Target.createTarget", json!({"url": "about:blank"}));
    let attached = cdp.call(
        "Target.attachToTarget",
        json!({"targetId": target["targetId"], "flatten": true}),
    );
    cdp.session = Some(attached["sessionId"].as_str().unwrap().to_string());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 900, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    );
    let file_url = format!("file://{}", page.canonicalize().unwrap().display());
    cdp.call("Page.navigate", json!({ "url": file_url }));

    // It drew.
    let start = Instant::now();
    while cdp.eval("!!(window.convkitViz && convkitViz.drawn)") != json!(true) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the page did not draw within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(cdp.eval("convkitViz.data.scene.frames.length"), json!(9));
    assert_eq!(
        cdp.eval("document.getElementById('pytorch').textContent"),
        json!(scene.pytorch)
    );
    // Pause and go to frame 0 with the controls.
    cdp.eval("document.getElementById('play').click()");
    assert_eq!(cdp.eval("convkitViz.playing"), json!(false));
    cdp.eval(
        "(() => { const s = document.getElementById('scrub'); s.value = 0; \
         s.dispatchEvent(new Event('input')); })()",
    );
    assert_eq!(cdp.eval("convkitViz.frame"), json!(0));
    let px = |cdp: &mut Cdp, p: usize, r: usize, c: usize| {
        cdp.eval(&format!("convkitViz.pixel({p}, {r}, {c})"))
    };
    assert_close(&px(&mut cdp, ii, 1, 1), shaded(INPUT));
    assert_close(&px(&mut cdp, ii, 4, 4), INPUT);
    assert_close(&px(&mut cdp, oi, 0, 0), shaded(OUTPUT));
    assert_close(&px(&mut cdp, oi, 2, 2), OUTPUT);

    // Hover output (1,1): its 9 taps (padded rows/cols 2..4) and the weights light up.
    let hover = scene.hover_map();
    let centre = cdp.eval(&format!("convkitViz.cellCentre({oi}, 1, 1)"));
    cdp.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": centre["x"], "y": centre["y"]}),
    );
    let lit = cells(&cdp.eval("convkitViz.lit()"));
    let want = &hover.iter().find(|h| h.cell == [oi, 1, 1]).unwrap().lights;
    assert_eq!(&lit, want);
    let taps: Vec<_> = lit.iter().filter(|c| c[0] == ii).collect();
    assert_eq!(taps.len(), 9);
    assert!(taps
        .iter()
        .all(|t| (2..5).contains(&t[1]) && (2..5).contains(&t[2])));
    assert_close(&px(&mut cdp, ii, 3, 3), shaded(INPUT));
    assert_close(&px(&mut cdp, ii, 1, 1), INPUT);
    assert_close(&px(&mut cdp, oi, 1, 1), shaded(OUTPUT));
    let shot = cdp.call("Page.captureScreenshot", json!({"format": "png"}));
    let png = data_encoding::BASE64
        .decode(shot["data"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let shot_path = out_dir.join("interactive.png");
    std::fs::write(&shot_path, &png).unwrap();
    eprintln!("screenshot: {}", shot_path.display());

    // Hover input (1,1) = padded (2,2): it feeds outputs (0,0), (0,1), (1,0), (1,1).
    let centre = cdp.eval(&format!("convkitViz.cellCentre({ii}, 2, 2)"));
    cdp.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseMoved", "x": centre["x"], "y": centre["y"]}),
    );
    let lit = cells(&cdp.eval("convkitViz.lit()"));
    let outs: Vec<CellRef> = lit.iter().copied().filter(|c| c[0] == oi).collect();
    assert_eq!(outs, vec![[oi, 0, 0], [oi, 0, 1], [oi, 1, 0], [oi, 1, 1]]);
    assert_close(&px(&mut cdp, oi, 0, 1), shaded(OUTPUT));
    assert_close(&px(&mut cdp, oi, 2, 2), OUTPUT);
    let hover_text = cdp.eval("document.getElementById('hover').textContent");
    assert!(
        hover_text.as_str().unwrap().contains("input (1, 1)"),
        "{hover_text}"
    );

    // The SVG animates in the browser: exactly one frame group is visible at a time, and the
    // visible one advances.
    let svg_path = out_dir.join("padding_strides.svg");
    let opts = convkit_viz::svg::SvgOptions {
        delay_ms: 200,
        ..Default::default()
    };
    std::fs::write(&svg_path, convkit_viz::svg::svg(&scene, &opts).unwrap()).unwrap();
    let svg_url = format!("file://{}", svg_path.canonicalize().unwrap().display());
    cdp.call("Page.navigate", json!({ "url": svg_url }));
    let visible = "(() => { const g = [...document.querySelectorAll('svg > g')]; \
                   if (g.length !== 9) return null; \
                   const v = g.map((e, i) => getComputedStyle(e).visibility === 'visible' ? i : -1) \
                   .filter((i) => i >= 0); return v.length === 1 ? v[0] : null; })()";
    let mut seen = std::collections::BTreeSet::new();
    let start = Instant::now();
    while seen.len() < 3 && start.elapsed() < Duration::from_secs(20) {
        if let Some(i) = cdp.eval(visible).as_u64() {
            seen.insert(i);
        }
        std::thread::sleep(Duration::from_millis(70));
    }
    assert!(seen.len() >= 3, "SVG frames seen visible: {seen:?}");
}
