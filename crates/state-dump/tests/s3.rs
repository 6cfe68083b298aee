//! The binary on `s3://bucket/prefix` paths of a real S3 API server (moto on 127.0.0.1,
//! started by `scripts/moto.sh start`): `summary`, `verify`, `entries`, `files` and `gc` on
//! checkpoints of both backends and on a savepoint written to S3, a file deleted from the
//! bucket named by its URL, and configuration errors that name the URL and the variable
//! (those run without a server). Without a server the server tests print that they are
//! skipped, unless `CI=true`, where they fail.

mod common;
#[path = "support/moto.rs"]
mod moto;

use std::path::Path;
use std::process::Command;

use cairn_rocksdb::RocksDbOptions;
use cairn_storage::CheckpointStorage;
use common::*;
use moto::moto;

/// Full checkpoint 1 and incremental checkpoint 2 of a job on `backend`, in
/// `s3://<bucket>/jobs/<backend>`; returns the model after each.
fn write_job(bucket: &str, backend: &str, local: &Path) -> (String, Vec<Model>) {
    let root = format!("s3://{bucket}/jobs/{backend}");
    let storage = CheckpointStorage::open(&root).unwrap();
    let mut model = Model::new();
    let mut models = Vec::new();
    match backend {
        "heap" => {
            let mut job = Job::new(2);
            batch(&mut job, &mut model, 0, 150);
            job.checkpoint(&storage, 1, false);
            models.push(model.clone());
            job.remove(&mut model, "w3");
            batch(&mut job, &mut model, 150, 7);
            job.checkpoint(&storage, 2, true);
            models.push(model.clone());
        }
        _ => {
            let mut job = Job::rocks(2, local, RocksDbOptions::default());
            batch(&mut job, &mut model, 0, 150);
            job.checkpoint(&storage, 1, false);
            models.push(model.clone());
            job.remove(&mut model, "w3");
            batch(&mut job, &mut model, 150, 7);
            job.checkpoint(&storage, 2, true);
            models.push(model.clone());
        }
    }
    (root, models)
}

#[test]
fn summary_verify_entries_and_gc_on_s3_checkpoints_of_both_backends() {
    let Some(m) = moto("summary_verify_entries_and_gc_on_s3_checkpoints_of_both_backends") else {
        return;
    };
    let bucket = m.bucket("dump-chk");
    let local = tempfile::tempdir().unwrap();
    for backend in ["heap", "rocks"] {
        let (root, models) = write_job(&bucket, backend, local.path());
        for (i, model) in models.iter().enumerate() {
            let chk = format!("{root}/chk-{}", i + 1);
            assert_dump_matches(&chk, model);
            let r = run(&["verify", &chk]);
            assert_eq!(r.code, 0, "{backend}: {r:?}");
            assert!(r.stdout.contains("clean"), "{r:?}");
        }
        // Its _metadata names the same checkpoint.
        assert_dump_matches(&format!("{root}/chk-2/_metadata"), &models[1]);

        let r = run(&["summary", &format!("{root}/chk-2"), "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let j = r.json();
        assert_eq!(j["id"], 2, "{j}");
        assert_eq!(j["path"], format!("{root}/chk-2"), "{j}");
        assert_eq!(j["kind"], "checkpoint", "{j}");

        let r = run(&["files", &root, "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = run(&["gc", &root, "--retain", "1", "--json"]);
        assert_eq!(r.code, 0, "{r:?}");
        let keys = m.keys(&bucket);
        let chk1 = format!("jobs/{backend}/chk-1/");
        assert!(!keys.iter().any(|k| k.starts_with(&chk1)), "{keys:?}");
        assert_dump_matches(&format!("{root}/chk-2"), &models[1]);
    }
}

#[test]
fn a_savepoint_on_s3_and_a_file_missing_from_the_bucket() {
    let Some(m) = moto("a_savepoint_on_s3_and_a_file_missing_from_the_bucket") else {
        return;
    };
    let bucket = m.bucket("dump-sp");
    let sp = format!("s3://{bucket}/savepoints/sp-5");
    let mut job = Job::new(3);
    let mut model = Model::new();
    batch(&mut job, &mut model, 0, 120);
    let manifest = job.savepoint(Path::new(&sp), 5);
    assert_dump_matches(&sp, &model);
    let r = run(&["summary", &sp, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["kind"], "savepoint", "{}", r.stdout);
    let r = run(&["verify", &sp]);
    assert_eq!(r.code, 0, "{r:?}");

    // Delete one state file from the bucket: verify names it by its s3:// URL.
    let name = &manifest.files().next().unwrap().name;
    let (status, body) = m.request("DELETE", &format!("/{bucket}/savepoints/sp-5/{name}"));
    assert_eq!(status, 204, "{body}");
    let r = run(&["verify", &sp]);
    assert_eq!(r.code, 1, "{r:?}");
    let url = format!("{sp}/{name}");
    assert!(
        r.stdout.contains(&url) || r.stderr.contains(&url),
        "names {url}: {r:?}"
    );
}

/// Runs the binary with only `env` for AWS (the rest of the environment minus `AWS_*`).
fn run_aws_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_state-dump"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn s3_configuration_errors_name_the_url_and_the_variable() {
    // A checkpoint is opened through its job's directory, which the error names.
    let url = "s3://some-bucket/jobs/j/chk-1";
    let root = "url=s3://some-bucket/jobs/j";
    let r = run_aws_env(&["summary", url], &[]);
    r.assert_error(2, &["no s3 credentials", "AWS_ACCESS_KEY_ID", root]);
    let r = run_aws_env(&["verify", url], &[("AWS_ACCESS_KEY_ID", "k")]);
    r.assert_error(2, &["AWS_SECRET_ACCESS_KEY", root]);
    // A savepoint directory is named as given.
    let sp = "s3://some-bucket/savepoints/sp-1";
    let r = run_aws_env(&["entries", sp, "--uid", "u", "--state", "s"], &[]);
    r.assert_error(2, &["AWS_ACCESS_KEY_ID", &format!("url={sp}")]);
    let keys = [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_ENDPOINT", "http://127.0.0.1:9"),
    ];
    let r = run_aws_env(&["gc", "s3://some-bucket/jobs/j", "--dry-run"], &keys);
    r.assert_error(2, &["AWS_ALLOW_HTTP", "s3://some-bucket/jobs/j"]);
}

/// A server that does not answer (nothing listens on 127.0.0.1:9): after object_store's
/// retries, an error that names the object by its full URL, once.
#[test]
fn an_unreachable_endpoint_names_the_object() {
    let env = [
        ("AWS_ACCESS_KEY_ID", "k"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("AWS_ENDPOINT", "http://127.0.0.1:9"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let r = run_aws_env(&["summary", "s3://some-bucket/jobs/j/chk-1"], &env);
    r.assert_error(1, &["get failed", "127.0.0.1:9"]);
    assert!(
        r.stderr
            .trim_end()
            .ends_with(" path=s3://some-bucket/jobs/j/chk-1/_metadata"),
        "{r:?}"
    );
    assert_eq!(r.stderr.matches("path=").count(), 1, "{r:?}");
}
