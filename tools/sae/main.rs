//! `sae`: the command-line tools. PLACEHOLDER (issue 2, item 6).
fn main() {
    eprintln!("sae: not implemented yet");
    std::process::exit(2);
}
