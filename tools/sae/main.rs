//! `sae`: the command-line tools. PLACEHOLDER (issue 2, item 6).
#[allow(dead_code)] // wired into the CLI once it lands
mod convert;

fn main() {
    eprintln!("sae: not implemented yet");
    std::process::exit(2);
}
