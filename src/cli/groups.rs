//! `fhirlake groups pending|approve|reject`: the operator's side of
//! `serve --group-approval manual`. Decisions are written to the
//! warehouse's state store; the running server applies them within a
//! second. `fhirlake groups refreshes ID`: a criteria Group's refresh log.

use fhirlake::group::refresh::read_refresh_log;
use fhirlake::jobs::approval::{Decision, decide, pending_jobs};
use fhirlake::state::StateStore;
use fhirlake::warehouse::Warehouse;

/// The `groups` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// List the Group changes waiting for approval.
    Pending,
    /// Approve a pending change (a job id, or a Group id with one pending change).
    Approve {
        /// Job id or Group id.
        id: String,
    },
    /// Reject a pending change; the client's poll answers with the reason.
    Reject {
        /// Job id or Group id.
        id: String,
        /// Why (told to the client).
        #[arg(long)]
        reason: String,
    },
    /// Print a Group's refresh log (one JSON record per line, oldest first).
    Refreshes {
        /// Group id.
        id: String,
    },
}

impl Command {
    /// Runs the subcommand.
    pub async fn run(self, warehouse: &str) -> anyhow::Result<()> {
        let warehouse = Warehouse::open(warehouse)?;
        let state = StateStore::new(warehouse.root().clone());
        match self {
            Command::Pending => {
                let pending = pending_jobs(&state).await?;
                if pending.is_empty() {
                    println!("no Group change is waiting for approval");
                }
                for job in pending {
                    let what = match &job.change {
                        Some(change) => format!("{} of {} members", change.action.operation(), change.members.len()),
                        None if job.request.is_member_based() => {
                            format!("{} member entries", job.request.member_entries().len())
                        }
                        None => format!("member-filter {}", job.request.filters.join(" AND ")),
                    };
                    println!(
                        "{}\t{:?}\tGroup/{}\t{}\t{}\t{what}",
                        job.id,
                        job.kind,
                        job.group_id,
                        job.owner.as_deref().unwrap_or("-"),
                        job.created_at
                    );
                }
            }
            Command::Approve { id } => {
                let job = decide(&state, &id, Decision::Approve).await?;
                println!("approved job {} (Group/{})", job.id, job.group_id);
            }
            Command::Reject { id, reason } => {
                let job = decide(&state, &id, Decision::Reject { reason }).await?;
                println!("rejected job {} (Group/{})", job.id, job.group_id);
            }
            Command::Refreshes { id } => {
                for record in read_refresh_log(&state, &id).await? {
                    println!("{}", serde_json::to_string(&record)?);
                }
            }
        }
        Ok(())
    }
}
