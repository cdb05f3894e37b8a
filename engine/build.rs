//! The engine's build script: with the `ofi` feature, compiles the ofi transport's C shim
//! (`src/fabric/ofi/shim.c`) and links libfabric; without it, does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "ofi")]
    ofi::build();
}

#[cfg(feature = "ofi")]
mod ofi {
    use std::process::Command;

    const SHIM: &str = "src/fabric/ofi/shim.c";

    /// Include and library directories from `pkg-config libfabric` where it answers; the system
    /// defaults otherwise.
    pub fn build() {
        println!("cargo:rerun-if-changed={SHIM}");
        let flags = |what: &str| -> Vec<String> {
            Command::new("pkg-config")
                .args([what, "libfabric"])
                .output()
                .ok()
                .filter(|out| out.status.success())
                .map(|out| {
                    String::from_utf8_lossy(&out.stdout)
                        .split_whitespace()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut shim = cc::Build::new();
        shim.file(SHIM).warnings(true);
        for flag in flags("--cflags") {
            if let Some(dir) = flag.strip_prefix("-I") {
                shim.include(dir);
            }
        }
        shim.compile("acre_ofi_shim");
        for flag in flags("--libs") {
            if let Some(dir) = flag.strip_prefix("-L") {
                println!("cargo:rustc-link-search=native={dir}");
            }
        }
        // After the shim, which calls into it.
        println!("cargo:rustc-link-lib=fabric");
    }
}
