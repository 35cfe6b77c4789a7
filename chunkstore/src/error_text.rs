//! Errors (and caught panics) as one line of text: an error and its causes, `: `-separated,
//! each once. The one formatter of the workspace, for messages and logs
//! (some libraries' own `Display` stops at the first cause, others end in a
//! Debug dump that helps nobody reading a log).

/// `e` and its causes on one line; a cause whose text a message before it
/// already quotes is not appended again.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
        cur = cause.source();
    }
    msg
}

/// The message a caught panic carries (`panic!` gives a `&str` or a
/// `String`), for the log line of whoever caught it.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("quoting: inner")]
    struct Quoting(#[source] Inner);

    #[test]
    fn every_cause_once() {
        assert_eq!(error_chain(&Outer(Inner)), "outer: inner");
        assert_eq!(error_chain(&Quoting(Inner)), "quoting: inner");
    }
}
