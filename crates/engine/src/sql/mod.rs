//! Read-only SQL for the network: the one entry point every SQL front (the
//! Postgres wire protocol, Flight SQL, `fhirlake sql`) runs statements
//! through. A [`SqlService`] is shared by a front; each connection opens a
//! [`SqlSession`] of its own (its settings, its memory pool), which plans
//! every statement over the warehouse's newest snapshot (one snapshot per
//! statement: a query never sees half a load), refuses what would write or
//! what the login may not read, and runs it under the time and memory
//! limits, counted and audited ([`ResultStream`]).

mod access;
mod settings;
mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use datafusion::common::ParamValues;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{self, Statement};

pub use access::{check_tables, table_reads, tables_read};
pub use settings::{Settings, canonical_name};
pub use stream::ResultStream;

use crate::analyst::{AnalystOptions, open_analyst_session_with};
use crate::error::{ErrorKind, HasKind};
use crate::query::{AccessDenied, GroupVisibility, QueryError, ReadAccess};
use crate::warehouse::catalog::QUERY_MEMORY_LIMIT;
use crate::warehouse::{Snapshot, Warehouse, WarehouseError};
use stream::{QueryRecord, is_memory_exhausted};

/// A hook every new session context passes through (a front adds its
/// catalog tables and functions: the Postgres front's `pg_catalog`).
pub type SessionHook = Arc<dyn Fn(&SessionContext) -> Result<(), DataFusionError> + Send + Sync>;

/// The limits every statement runs under.
#[derive(Debug, Clone, Copy)]
pub struct SqlLimits {
    /// Bytes one query may hold in sorts, joins and aggregates (beyond
    /// them it spills to disk where the operator can, else fails).
    pub memory_bytes: usize,
    /// Longest a query may run, results included.
    pub timeout: Duration,
}

impl Default for SqlLimits {
    fn default() -> Self {
        Self {
            memory_bytes: QUERY_MEMORY_LIMIT,
            timeout: Duration::from_secs(600),
        }
    }
}

/// Who runs a session's statements.
#[derive(Debug, Clone)]
pub struct Login {
    /// The name audit records carry (a client id, `local` without auth).
    pub name: String,
    /// What it may read.
    pub access: ReadAccess,
    /// The Groups it sees in the Group tables.
    pub groups: GroupVisibility,
}

/// Errors of network SQL.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// The statement does not parse.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The statement would write.
    #[error("fhirlake's SQL is read-only: {0} is refused")]
    ReadOnly(String),
    /// The statement reads what the login may not read.
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    /// `SET` of a setting only the server may change.
    #[error("parameter \"{0}\" cannot be changed: the server sets it")]
    ServerSetting(String),
    /// `SET` of a setting fhirlake does not know.
    #[error("unrecognized configuration parameter \"{0}\"")]
    UnknownSetting(String),
    /// A setting's value is not valid.
    #[error("invalid value for parameter \"{name}\": \"{value}\"")]
    InvalidSetting {
        /// The setting.
        name: String,
        /// The value given.
        value: String,
    },
    /// A statement of a kind fhirlake does not run.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// The query needed more memory than its limit.
    #[error("query over the memory limit of {limit_mib} MiB per query: {detail}")]
    MemoryLimit {
        /// The limit.
        limit_mib: usize,
        /// DataFusion's account of the allocation that failed.
        detail: String,
    },
    /// The query ran longer than its limit.
    #[error("query cancelled: it ran longer than the time limit of {0:?}")]
    Timeout(Duration),
    /// Planning or running failed otherwise.
    #[error(transparent)]
    Query(#[from] QueryError),
}

impl SqlError {
    /// The error of a failed execution, recognising the memory limit.
    fn from_execution(error: DataFusionError, memory_limit: usize) -> Self {
        if is_memory_exhausted(&error) {
            return Self::MemoryLimit {
                limit_mib: memory_limit / (1024 * 1024),
                detail: error.find_root().to_string(),
            };
        }
        if let DataFusionError::External(inner) = error.find_root()
            && let Some(denied) = inner.downcast_ref::<AccessDenied>()
        {
            return Self::Denied(denied.clone());
        }
        if let DataFusionError::SQL(parse, _) = error.find_root() {
            return Self::Syntax(parse.to_string());
        }
        Self::Query(QueryError::DataFusion(error))
    }
}

impl HasKind for SqlError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Syntax(_) | Self::UnknownSetting(_) | Self::InvalidSetting { .. } => ErrorKind::Invalid,
            Self::ReadOnly(_) | Self::Denied(_) | Self::ServerSetting(_) => ErrorKind::Forbidden,
            Self::Unsupported(_) => ErrorKind::NotSupported,
            Self::MemoryLimit { .. } | Self::Timeout(_) => ErrorKind::TooMany,
            Self::Query(e) => e.kind(),
        }
    }

    fn is_private(&self) -> bool {
        matches!(self, Self::Query(e) if e.is_private())
    }
}

impl From<WarehouseError> for SqlError {
    fn from(error: WarehouseError) -> Self {
        Self::Query(QueryError::Warehouse(error))
    }
}

/// What a front shares between its connections.
#[derive(Clone)]
pub struct SqlService {
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    warehouse: Warehouse,
    limits: SqlLimits,
    front: &'static str,
    running: Arc<AtomicUsize>,
    hook: Option<SessionHook>,
}

impl SqlService {
    /// SQL over `warehouse` for the front named `front` (in audit records).
    pub fn new(warehouse: Warehouse, limits: SqlLimits, front: &'static str) -> Self {
        Self::with_hook(warehouse, limits, front, None)
    }

    /// [`SqlService::new`], passing every session context through `hook`.
    pub fn with_hook(warehouse: Warehouse, limits: SqlLimits, front: &'static str, hook: Option<SessionHook>) -> Self {
        Self {
            inner: Arc::new(ServiceInner {
                warehouse,
                limits,
                front,
                running: Arc::new(AtomicUsize::new(0)),
                hook,
            }),
        }
    }

    /// Queries whose results are being produced now.
    pub fn running_queries(&self) -> usize {
        self.inner.running.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The limits statements run under.
    pub fn limits(&self) -> SqlLimits {
        self.inner.limits
    }

    /// A session for `login` (its context is opened at its first statement).
    pub fn open(&self, login: Login) -> SqlSession {
        SqlSession {
            service: self.clone(),
            login,
            opened: None,
            settings: Settings::default(),
        }
    }
}

/// The DataFusion context of one snapshot.
struct Opened {
    ctx: SessionContext,
    snapshot: Option<Arc<Snapshot>>,
}

/// What a statement turned out to be.
#[derive(Debug)]
pub enum Prepared {
    /// A query, planned and checked: run it with [`SqlSession::execute`].
    Query(PlannedQuery),
    /// `SET`/`RESET` applied: the setting's name and new value.
    Set {
        /// Canonical name.
        name: String,
        /// Its value now.
        value: String,
    },
    /// `SHOW name`.
    Show {
        /// Canonical name.
        name: String,
        /// Its value.
        value: String,
    },
    /// A statement answered by its command tag alone: transactions
    /// (accepted with nothing to do: every statement reads one snapshot
    /// and nothing is written), `RESET`, `DISCARD ALL`.
    Command(&'static str),
}

/// A planned, checked query.
#[derive(Debug, Clone)]
pub struct PlannedQuery {
    plan: LogicalPlan,
    tables: Vec<String>,
    sql: String,
}

impl PlannedQuery {
    /// The plan (its schema is the result's; its placeholders `$1`… the
    /// parameters).
    pub fn plan(&self) -> &LogicalPlan {
        &self.plan
    }

    /// The tables it reads.
    pub fn tables(&self) -> &[String] {
        &self.tables
    }
}

/// One connection's SQL session.
pub struct SqlSession {
    service: SqlService,
    login: Login,
    opened: Option<Opened>,
    settings: Settings,
}

impl SqlSession {
    /// Who the session runs as.
    pub fn login(&self) -> &Login {
        &self.login
    }

    /// The session's settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The session context of the newest snapshot (opened, or reopened
    /// after a commit, here).
    pub async fn context(&mut self) -> Result<&SessionContext, SqlError> {
        let latest = self.service.inner.warehouse.latest_version().await?;
        let opened = match self.opened.take() {
            Some(opened) if opened.snapshot.as_ref().map(|s| s.version) == latest => self.opened.insert(opened),
            _ => {
                let opened = self.open_context().await?;
                self.opened.insert(opened)
            }
        };
        Ok(&opened.ctx)
    }

    async fn open_context(&self) -> Result<Opened, SqlError> {
        let inner = &self.service.inner;
        let options = AnalystOptions {
            memory_limit: inner.limits.memory_bytes,
            access: self.login.access.clone(),
            groups: self.login.groups.clone(),
        };
        let (ctx, snapshot) = open_analyst_session_with(&inner.warehouse, &options).await?;
        if let Some(hook) = &inner.hook {
            hook(&ctx).map_err(|e| self.failed(e))?;
        }
        self.apply_search_path(&ctx);
        Ok(Opened {
            ctx,
            snapshot: snapshot.map(Arc::new),
        })
    }

    /// Unqualified names resolve in the first schema of `search_path`.
    fn apply_search_path(&self, ctx: &SessionContext) {
        let schema = self
            .settings
            .first_schema()
            .filter(|s| s == crate::warehouse::catalog::RESOURCE_SCHEMA)
            .unwrap_or_else(|| crate::warehouse::snapshot_catalog::DEFAULT_SCHEMA.to_string());
        let state = ctx.state_ref();
        let mut state = state.write();
        state.config_mut().options_mut().catalog.default_schema = schema;
    }

    /// The error of a failed plan or run, with this session's memory limit.
    fn failed(&self, error: DataFusionError) -> SqlError {
        SqlError::from_execution(error, self.service.inner.limits.memory_bytes)
    }

    /// Decides what `statement` is: settings and transaction statements
    /// are applied here; a query is planned over the newest snapshot and
    /// checked (read-only, the login's access).
    pub async fn prepare(&mut self, statement: DfStatement, sql: &str) -> Result<Prepared, SqlError> {
        if let DfStatement::Statement(inner) = &statement
            && let Some(prepared) = self.session_statement(inner).await?
        {
            return Ok(prepared);
        }
        if let Some(refused) = writes(&statement) {
            return Err(SqlError::ReadOnly(refused));
        }
        let ctx = self.context().await?.clone();
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| self.failed(e))?;
        let prepared_statement = prepared_statement_tag(&plan);
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let executes = matches!(
            &plan,
            LogicalPlan::Statement(datafusion::logical_expr::Statement::Execute(_))
        );
        if prepared_statement.is_none()
            && !executes
            && let Err(e) = options.verify_plan(&plan)
        {
            return Err(SqlError::ReadOnly(refused_statement(&plan, &e)));
        }
        let default_schema = ctx.state().config().options().catalog.default_schema.clone();
        let tables = tables_read(&plan);
        let snapshot = self.opened.as_ref().and_then(|o| o.snapshot.as_deref());
        check_tables(&self.login.access, snapshot, &tables, &default_schema)?;
        if let Some(tag) = prepared_statement {
            // `PREPARE` (checked above through its query) and `DEALLOCATE`
            // change the session's prepared statements now.
            ctx.execute_logical_plan(plan).await.map_err(|e| self.failed(e))?;
            return Ok(Prepared::Command(tag));
        }
        Ok(Prepared::Query(PlannedQuery {
            plan,
            tables: tables.iter().map(ToString::to_string).collect(),
            sql: sql.to_string(),
        }))
    }

    /// `SET`, `SHOW`, `RESET`, transactions: what the session answers itself.
    async fn session_statement(&mut self, statement: &Statement) -> Result<Option<Prepared>, SqlError> {
        if !answers_itself(statement) {
            return Ok(None);
        }
        let prepared = match statement {
            Statement::Set(set) => self.set(set)?,
            Statement::Reset(reset) => {
                match &reset.reset {
                    ast::Reset::ALL => self.settings.reset_all(),
                    ast::Reset::ConfigurationParameter(name) => {
                        self.settings.set(&name.to_string(), None)?;
                    }
                }
                Prepared::Command("RESET")
            }
            Statement::Discard { .. } => {
                self.settings.reset_all();
                Prepared::Command("DISCARD ALL")
            }
            Statement::ShowVariable { variable } => {
                let name = show_name(variable);
                let value = self
                    .settings
                    .get(&name)
                    .ok_or_else(|| SqlError::UnknownSetting(name.clone()))?;
                Prepared::Show { name, value }
            }
            Statement::StartTransaction { .. } => Prepared::Command("BEGIN"),
            Statement::Commit { .. } => Prepared::Command("COMMIT"),
            Statement::Rollback { savepoint: Some(_), .. } => Prepared::Command("ROLLBACK"),
            Statement::Rollback { .. } => Prepared::Command("ROLLBACK"),
            Statement::Savepoint { .. } => Prepared::Command("SAVEPOINT"),
            Statement::ReleaseSavepoint { .. } => Prepared::Command("RELEASE"),
            _ => return Ok(None),
        };
        if let Prepared::Set { name, .. } = &prepared
            && name == "search_path"
            && let Some(opened) = &self.opened
        {
            self.apply_search_path(&opened.ctx);
        }
        Ok(Some(prepared))
    }

    fn set(&mut self, set: &ast::Set) -> Result<Prepared, SqlError> {
        let (name, value) = match set {
            ast::Set::SingleAssignment { variable, values, .. } => {
                let value = values.iter().map(setting_value).collect::<Vec<_>>().join(", ");
                (variable.to_string(), value)
            }
            ast::Set::SetTimeZone { value, .. } => ("timezone".to_string(), setting_value(value)),
            ast::Set::SetNames { charset_name, .. } => ("client_encoding".to_string(), charset_name.value.clone()),
            ast::Set::SetTransaction { .. } => return Ok(Prepared::Command("SET")),
            other => return Err(SqlError::Unsupported(other.to_string())),
        };
        let value = if value.eq_ignore_ascii_case("default") {
            None
        } else {
            Some(value)
        };
        let name = self.settings.set(&name, value)?;
        let value = self.settings.get(&name).unwrap_or_default();
        Ok(Prepared::Set { name, value })
    }

    /// Runs `query` (with `params` for its placeholders) under the limits.
    pub async fn execute(
        &mut self,
        query: &PlannedQuery,
        params: Option<ParamValues>,
    ) -> Result<ResultStream, SqlError> {
        let inner = self.service.inner.clone();
        // The plan reads the snapshot it was planned on; the context it
        // was planned in runs it (no second listing of the manifests).
        let ctx = match &self.opened {
            Some(opened) => opened.ctx.clone(),
            None => self.context().await?.clone(),
        };
        let plan = match params {
            Some(params) => query
                .plan
                .clone()
                .replace_params_with_values(&params)
                .map_err(|e| self.failed(e))?,
            None => query.plan.clone(),
        };
        let timeout = match self.settings.statement_timeout() {
            Some(own) => own.min(inner.limits.timeout),
            None => inner.limits.timeout,
        };
        let memory = inner.limits.memory_bytes;
        let began = std::time::Instant::now();
        let started = tokio::time::timeout(timeout, async {
            let frame = ctx.execute_logical_plan(plan).await?;
            frame.execute_stream().await
        })
        .await
        .map_err(|_| SqlError::Timeout(timeout))?
        .map_err(|e| SqlError::from_execution(e, memory))?;
        let record = QueryRecord {
            login: self.login.name.clone(),
            front: inner.front,
            tables: query.tables.clone(),
            sql: query.sql.clone(),
        };
        // The limit covers planning and results together.
        let left = timeout.saturating_sub(began.elapsed());
        Ok(ResultStream::new(
            started,
            (left, timeout),
            memory,
            record,
            inner.running.clone(),
        ))
    }
}

/// Whether the session answers `statement` itself (settings and
/// transactions) rather than planning it as a query.
pub fn answers_itself(statement: &Statement) -> bool {
    match statement {
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::Discard { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => true,
        // DataFusion's own `SHOW ALL` / `SHOW datafusion.…` are queries.
        Statement::ShowVariable { variable } => {
            let name = show_name(variable);
            !(name == "all" || name.starts_with("datafusion."))
        }
        _ => false,
    }
}

/// The setting `SHOW a b c` names.
fn show_name(variable: &[ast::Ident]) -> String {
    canonical_name(&variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" "))
}

/// A setting's value as text (`'ISO, MDY'` → `ISO, MDY`, `on` → `on`).
fn setting_value(expr: &ast::Expr) -> String {
    match expr {
        ast::Expr::Value(value) => match &value.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(ident) => ident.value.clone(),
        other => other.to_string(),
    }
}

/// `PREPARE` and `DEALLOCATE` (SQL-level prepared statements, which the
/// session keeps until its snapshot changes): their command tags.
/// `EXECUTE` is a query.
fn prepared_statement_tag(plan: &LogicalPlan) -> Option<&'static str> {
    use datafusion::logical_expr::Statement as PlanStatement;
    match plan {
        LogicalPlan::Statement(PlanStatement::Prepare(_)) => Some("PREPARE"),
        LogicalPlan::Statement(PlanStatement::Deallocate(_)) => Some("DEALLOCATE"),
        _ => None,
    }
}

/// What `statement` would write, if it writes: refused before planning
/// (some writes, like Postgres `COPY`, would otherwise fail as
/// "not implemented" rather than as read-only).
fn writes(statement: &DfStatement) -> Option<String> {
    let what = match statement {
        DfStatement::CopyTo(_) => "COPY … TO (writing files)",
        DfStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE",
        DfStatement::Statement(inner) => match inner.as_ref() {
            Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => "COPY",
            Statement::Insert(_) => "INSERT",
            Statement::Update { .. } => "UPDATE",
            Statement::Delete(_) => "DELETE",
            Statement::Merge { .. } => "MERGE",
            Statement::Truncate { .. } => "TRUNCATE",
            Statement::CreateTable(_) => "CREATE TABLE",
            Statement::CreateView { .. } => "CREATE VIEW",
            Statement::CreateIndex(_) => "CREATE INDEX",
            Statement::CreateSchema { .. } => "CREATE SCHEMA",
            Statement::CreateDatabase { .. } => "CREATE DATABASE",
            Statement::CreateFunction(_) => "CREATE FUNCTION",
            Statement::Drop { .. } => "DROP",
            Statement::AlterTable { .. } => "ALTER TABLE",
            _ => return None,
        },
        _ => return None,
    };
    Some(what.to_string())
}

/// What a refused plan would have done, in words.
fn refused_statement(plan: &LogicalPlan, error: &DataFusionError) -> String {
    match plan {
        LogicalPlan::Copy(_) => "COPY … TO (writing files)".into(),
        LogicalPlan::Dml(dml) => format!("{} (writing a table)", dml.op),
        LogicalPlan::Ddl(ddl) => format!("{} (changing the catalog)", ddl.name()),
        LogicalPlan::Statement(statement) => format!("{} (changing the session)", statement.name()),
        _ => error.to_string(),
    }
}
