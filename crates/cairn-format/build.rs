fn main() {
    // `cargo fuzz` builds with `--cfg fuzzing`; declare it so `unexpected_cfgs` stays quiet.
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
}
