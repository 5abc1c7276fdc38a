//! Writes the gallery into the folder given as the first argument (default `gallery`).
fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "gallery".into());
    match convkit_viz::write_gallery(std::path::Path::new(&dir)) {
        Ok(items) => {
            for it in &items {
                println!("{} {} frames", it.name, it.frames);
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
