//! The console, driven through a pseudo-terminal by `console_pty.py` (line
//! editing, history, completion, events above the input line, Ctrl-D).
//! Python 3 is a prerequisite of the test suite: its absence fails the test.

#[test]
fn the_console_behaves_like_a_line_editor() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console_pty.py");
    let out = std::process::Command::new("python3")
        .args([script, env!("CARGO_BIN_EXE_rs2p")])
        .output()
        .expect("python3 is required to drive the console through a pty");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "console OK", "{stderr}");
}
