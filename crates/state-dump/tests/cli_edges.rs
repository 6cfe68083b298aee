//! Regressions found by using the CLI at its edges (session 24), one module each.

mod common;

mod convert_output_inside_a_job_directory {
    //! Regression: `convert --out` into a job's checkpoint directory, one of its `chk-<id>/`
    //! directories or its `shared/` directory was written without a word, and then the job or
    //! `gc` took the savepoint for theirs (a `_metadata` in `chk-99/` made `files` report a
    //! corrupt checkpoint and stopped `gc` from collecting shared files; a savepoint in
    //! `shared/` was deleted by the next `gc`). Such an output is refused before anything is
    //! written; a savepoint beside the checkpoints (`<job>/sp-2`) is fine and `gc` keeps it.

    use std::collections::BTreeSet;
    use std::path::Path;

    use crate::common::*;
    use cairn_storage::CheckpointStorage;

    fn on_disk(root: &Path) -> BTreeSet<String> {
        fn walk(p: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                out.insert(e.path().display().to_string());
                if e.path().is_dir() {
                    walk(&e.path(), out);
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(root, &mut out);
        out
    }

    #[test]
    fn convert_refuses_an_output_the_job_or_gc_would_take_for_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("job");
        let storage = CheckpointStorage::open(s(&root)).unwrap();
        let mut job = Job::new(2);
        let mut model = Model::new();
        batch(&mut job, &mut model, 0, 50);
        job.checkpoint(&storage, 1, true);
        batch(&mut job, &mut model, 50, 5);
        job.checkpoint(&storage, 2, true);
        let chk = root.join("chk-2");
        let before = on_disk(&root);

        for (out, needle) in [
            (root.clone(), "a job's checkpoint directory"),
            (root.join("chk-9"), "inside checkpoint directory"),
            (root.join("chk-1").join("sp"), "inside checkpoint directory"),
            (root.join("shared").join("sp"), "where gc deletes"),
            (
                root.join("shared").join("..").join("shared"),
                "where gc deletes",
            ),
        ] {
            let r = run(&["convert", s(&chk), "--out", s(&out)]);
            r.assert_error(2, &["--out is", needle, "path=/"]);
            assert_eq!(
                on_disk(&root),
                before,
                "a refused convert wrote into {out:?}"
            );
        }

        // Beside the checkpoints is fine, and gc leaves it alone.
        let sp = root.join("sp-2");
        let r = run(&["convert", s(&chk), "--out", s(&sp)]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = run(&["gc", s(&root), "--min-age", "0"]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = run(&["verify", s(&sp)]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_dump_matches(s(&sp), &model);
    }
}

mod convert_output_path_in_messages {
    //! Regression: `convert --out` with a relative path named the existing savepoint at the
    //! path doubled (`/cwd/out/out/_metadata`); an `--out` that is a file or empty was reported
    //! as "not a snapshot" (the input's error), and an output under a file as `… path=… path=`
    //! (a storage error without a path mapping). Each names the output directory once, by its
    //! absolute path.

    use std::process::Command;

    use crate::common::*;
    use cairn_storage::CheckpointStorage;

    fn run_in(cwd: &std::path::Path, args: &[&str]) -> Run {
        let out = Command::new(env!("CARGO_BIN_EXE_state-dump"))
            .args(args)
            .current_dir(cwd)
            .output()
            .unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[test]
    fn convert_names_its_output_directory_once_and_by_its_absolute_path() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = dir.path().canonicalize().unwrap();
        let root = cwd.join("job");
        let storage = CheckpointStorage::open(s(&root)).unwrap();
        let mut job = Job::new(1);
        let mut model = Model::new();
        batch(&mut job, &mut model, 0, 20);
        job.checkpoint(&storage, 1, true);

        let first = run_in(&cwd, &["convert", "job/chk-1", "--out", "out/sp"]);
        assert_eq!(first.code, 0, "{first:?}");
        let again = run_in(&cwd, &["convert", "job/chk-1", "--out", "./out/../out/sp"]);
        again.assert_error(2, &["already holds a savepoint"]);
        let expected = format!("path={}/out/sp/_metadata", cwd.display());
        assert!(again.stderr.trim_end().ends_with(&expected), "{again:?}");

        std::fs::write(cwd.join("afile"), b"x").unwrap();
        let file = run_in(&cwd, &["convert", "job/chk-1", "--out", "afile"]);
        file.assert_error(2, &["bad usage: --out is not a directory"]);
        assert!(!file.stderr.contains("not a snapshot"), "{file:?}");
        assert!(
            file.stderr
                .trim_end()
                .ends_with(&format!("path={}/afile", cwd.display())),
            "{file:?}"
        );

        let empty = run_in(&cwd, &["convert", "job/chk-1", "--out", ""]);
        empty.assert_error(2, &["bad usage: --out is empty"]);

        // Under a file: a usage error that names the file (it was exit 1, the create_dir
        // failure).
        let under = run_in(&cwd, &["convert", "job/chk-1", "--out", "afile/sp/x"]);
        under.assert_error(
            2,
            &[
                &format!(
                    "--out lies under {}/afile, which is not a directory",
                    cwd.display()
                ),
                &format!("path={}/afile/sp/x", cwd.display()),
            ],
        );
        assert_eq!(under.stderr.matches("path=").count(), 1, "{under:?}");
    }
}

mod files_reports_missing_private_files {
    //! Regression: `files` checked only shared files: a complete checkpoint whose private file
    //! (in `chk-<id>/`) was gone was listed as fine and the command exited 0. It now lists the
    //! missing private files per checkpoint (`missing_private` in JSON, `MISSING` in the table)
    //! and exits 1, as for a missing shared file.

    use crate::common::*;
    use cairn_core::FileArea;
    use cairn_storage::CheckpointStorage;

    #[test]
    fn files_reports_a_missing_private_file_and_exits_1() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("job");
        let storage = CheckpointStorage::open(s(&root)).unwrap();
        let mut job = Job::new(2);
        let mut model = Model::new();
        batch(&mut job, &mut model, 0, 30);
        let m = job.checkpoint(&storage, 1, false);
        let private: Vec<String> = m
            .files()
            .filter(|f| f.area == FileArea::Private)
            .map(|f| f.name.clone())
            .collect();
        assert!(
            !private.is_empty(),
            "a full checkpoint writes private files"
        );

        let clean = run(&["files", s(&root), "--json"]);
        assert_eq!(clean.code, 0, "{clean:?}");
        assert_eq!(
            clean.json()["checkpoints"][0]["missing_private"],
            serde_json::json!([])
        );

        std::fs::remove_file(root.join("chk-1").join(&private[0])).unwrap();
        let r = run(&["files", s(&root), "--json"]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(
            r.json()["checkpoints"][0]["missing_private"],
            serde_json::json!([private[0]]),
            "{r:?}"
        );
        assert!(r.stderr.contains("missing files"), "{r:?}");
        let text = run(&["files", s(&root)]);
        assert_eq!(text.code, 1, "{text:?}");
        assert!(
            text.stdout
                .contains(&format!("MISSING 1 private file(s): {}", private[0])),
            "{text:?}"
        );
    }
}

mod gc_and_files_on_a_savepoint_directory {
    //! Regression: `gc` and `files` given a savepoint directory instead of a job's checkpoint
    //! directory reported an empty job ("retaining no complete checkpoint", exit 0), and `gc`
    //! left a `_lock` file in the savepoint. Both refuse it as bad usage and touch nothing.

    use crate::common::*;

    #[test]
    fn gc_and_files_refuse_a_savepoint_directory_and_leave_it_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let mut job = Job::new(2);
        let mut model = Model::new();
        batch(&mut job, &mut model, 0, 20);
        let sp = dir.path().join("sp-1");
        job.savepoint(&sp, 1);
        let names = |p: &std::path::Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let before = names(&sp);
        for args in [
            vec!["gc", s(&sp)],
            vec!["gc", s(&sp), "--dry-run"],
            vec!["gc", s(&sp), "--min-age", "0", "--json"],
            vec!["files", s(&sp)],
        ] {
            let r = run(&args);
            r.assert_error(
                2,
                &[
                    "bad usage:",
                    s(&sp),
                    "is a savepoint or checkpoint directory",
                ],
            );
            assert!(r.stdout.is_empty(), "{r:?}");
            assert_eq!(names(&sp), before, "{args:?} changed the savepoint");
        }
        assert_eq!(run(&["verify", s(&sp)]).code, 0);
    }
}

mod oversized_manifest_names_its_path {
    //! Regression: a `_metadata` over the manifest limit (64 MiB) was reported as
    //! `object is larger than the limit: … path=chk-1/_metadata path=` — the store's relative
    //! object path, then an empty one. It is a corrupt manifest named by its full path, exit 1;
    //! `files` and `gc` list it as a corrupt checkpoint (they failed for the whole directory).

    use crate::common::*;
    use cairn_storage::CheckpointStorage;

    #[test]
    fn an_oversized_manifest_is_corrupt_and_named_by_its_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("job");
        let storage = CheckpointStorage::open(s(&root)).unwrap();
        let mut job = Job::new(1);
        let mut model = Model::new();
        batch(&mut job, &mut model, 0, 10);
        job.checkpoint(&storage, 1, true);
        let sp = dir.path().join("sp");
        job.savepoint(&sp, 2);

        for (snapshot, manifest) in [
            (root.join("chk-1"), root.join("chk-1").join("_metadata")),
            (sp.clone(), sp.join("_metadata")),
        ] {
            // Sparse: no 70 MiB written.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&manifest)
                .unwrap();
            f.set_len(70 << 20).unwrap();
            for cmd in ["summary", "verify"] {
                let r = run(&[cmd, s(&snapshot)]);
                r.assert_error(
                    1,
                    &["corrupt manifest: manifest larger than the limit len=73400320"],
                );
                assert!(
                    r.stderr
                        .contains(&format!("path={} offset=67108864", s(&manifest))),
                    "{r:?}"
                );
                assert_eq!(r.stderr.matches("path=").count(), 1, "{r:?}");
            }
        }
        let files = run(&["files", s(&root)]);
        assert_eq!(files.code, 1, "{files:?}");
        assert!(
            files.stdout.contains("chk-1       corrupt")
                && files.stdout.contains("manifest larger than the limit"),
            "{files:?}"
        );
        let gc = run(&["gc", s(&root), "--dry-run"]);
        assert_eq!(gc.code, 0, "{gc:?}");
        assert!(gc.stdout.contains("corrupt manifest: chk-1"), "{gc:?}");
    }
}
