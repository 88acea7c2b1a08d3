//! Fault injection for tests, compiled only with the cargo feature
//! `fault-injection` (off by default, so release builds lack it;
//! `scripts/test.sh` turns it on): after handing the `n`-th delivery to the
//! hub, the consumer drops its connection or ends the process instead of
//! acking it, as a network cut or a crash between the emit and the ack
//! would.
//!
//! It changes nothing unless a test asks for a fault.

use std::fmt::Display;

use tracing::warn;

use super::{Consumer, SessionEnd};

#[derive(Debug, Clone, Copy)]
pub(super) enum Fault {
    DropConnection,
    ExitProcess,
}

impl Consumer {
    /// Fault injection for tests: after handing the `n`-th delivery (from
    /// start, 1-based) to the hub, drop the connection instead of acking it,
    /// as a network cut between the emit and the ack would. The broker then
    /// redelivers it and everything after it.
    #[doc(hidden)]
    pub fn drop_connection_before_ack(mut self, n: u64) -> Consumer {
        self.fault = Some((n, Fault::DropConnection));
        self
    }

    /// Fault injection for tests: after handing the `n`-th delivery to the
    /// hub, end the process at once (exit code 137, no destructors, no
    /// ack), as a crash between the emit and the ack would.
    #[doc(hidden)]
    pub fn exit_process_before_ack(mut self, n: u64) -> Consumer {
        self.fault = Some((n, Fault::ExitProcess));
        self
    }

    /// Injects the planned fault if `received` is its delivery: `Some`
    /// when the session ends here instead of acking it.
    pub(super) async fn fault_before_ack(
        &mut self,
        received: u64,
        id: impl Display,
    ) -> Option<SessionEnd> {
        match self.fault {
            Some((n, Fault::DropConnection)) if n == received => {
                self.fault = None;
                warn!(%id, "fault injection: dropping the connection before the ack");
                Some(SessionEnd::Fault)
            }
            Some((n, Fault::ExitProcess)) if n == received => {
                // Between the log and the ack: the change is on disk (the
                // replay log's writer said so), the broker still has it.
                let _ = self.hub.wait_logged().await;
                warn!(%id, "fault injection: ending the process after the log, before the ack");
                std::process::exit(137);
            }
            _ => None,
        }
    }
}
