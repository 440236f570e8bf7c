fn main() {
    eprintln!("darkstore-sim: not built yet (issue 5)");
    std::process::exit(2);
}
