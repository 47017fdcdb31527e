//! One client connection: its login, its SQL session, and the pgwire
//! handlers (startup, simple and extended query) over them.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use fhirlake_engine::sql::{PlannedQuery, Prepared, SqlError, SqlSession, answers_itself};
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::PortalExecutionState;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_query_response};
use pgwire::api::results::{DescribePortalResponse, DescribeStatementResponse, FieldInfo, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::Entry;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, DEFAULT_NAME, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::extendedquery::Execute;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use tokio::sync::Mutex;

use crate::errors::{to_wire, wire_error};
use crate::results::{parameter_types, parameter_values, query_response, show_fields, show_response};
use crate::{Authentication as LoginRule, Shared, login};

/// A statement the client prepared (extended protocol).
#[derive(Debug, Clone)]
pub enum PgStatement {
    /// A query, planned and checked at Parse.
    Query(Box<PlannedQuery>),
    /// `SET`, `SHOW`, `BEGIN`, …: answered at Execute.
    Session {
        /// The statement.
        statement: Box<Statement>,
    },
    /// A statement with placeholders that plans only with its values
    /// (`cohort($1)`): planned at Bind/Execute ([`crate::deferred`]).
    Deferred {
        /// The statement.
        statement: Box<Statement>,
    },
}

/// One connection's state and handlers.
pub struct Connection {
    shared: Arc<Shared>,
    session: Mutex<Option<SqlSession>>,
    /// The cancel signal of the result being streamed (extended protocol).
    stream_cancel: Mutex<Option<futures::channel::oneshot::Receiver<()>>>,
    parser: Arc<StatementParser>,
}

/// Parses and plans statements for the extended protocol.
pub struct StatementParser {
    connection: std::sync::Weak<Connection>,
}

impl Connection {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new_cyclic(|weak| Self {
            shared,
            session: Mutex::new(None),
            stream_cancel: Mutex::new(None),
            parser: Arc::new(StatementParser {
                connection: weak.clone(),
            }),
        })
    }

    /// Starts the SQL session of an authenticated login.
    async fn start_session(&self, login: fhirlake_engine::sql::Login) {
        tracing::info!(target: "fhirlake::audit", event = "pg_login", login = %login.name);
        let session = self.shared.sql.open(login);
        *self.session.lock().await = Some(session);
    }

    /// Parses `sql` into statements, Postgres dialect, with the rewrites
    /// client catalog queries need.
    fn parse(sql: &str) -> Result<Vec<Statement>, SqlError> {
        let mut statements = PostgresCompatibilityParser::new()
            .parse(sql)
            .map_err(|e| SqlError::Syntax(e.to_string()))?;
        statements.iter_mut().for_each(crate::rewrite::rewrite);
        Ok(statements)
    }

    /// Runs one statement of the simple protocol.
    async fn run(
        &self,
        session: &mut SqlSession,
        statement: Statement,
        format: Arc<FormatOptions>,
    ) -> Result<Response, SqlError> {
        let sql = statement.to_string();
        let prepared = session
            .prepare(DfStatement::Statement(Box::new(statement)), &sql)
            .await?;
        respond(session, prepared, None, &Format::UnifiedText, format, None).await
    }
}

impl Connection {
    /// Plans a deferred statement with the values bound to `portal`.
    async fn plan_bound(&self, statement: &Statement, portal: &Portal<PgStatement>) -> PgWireResult<PlannedQuery> {
        let bound = crate::deferred::bind(statement, portal)?;
        let sql = bound.to_string();
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(not_logged_in)?;
        match session.prepare(DfStatement::Statement(Box::new(bound)), &sql).await {
            Ok(Prepared::Query(query)) => Ok(query),
            Ok(_) => Err(wire_error("XX000", "a session statement was planned as a query")),
            Err(e) => Err(to_wire(e)),
        }
    }
}

/// The response to a prepared statement.
async fn respond(
    session: &mut SqlSession,
    prepared: Prepared,
    params: Option<datafusion::common::ParamValues>,
    format: &Format,
    options: Arc<FormatOptions>,
    cancel: Option<futures::channel::oneshot::Receiver<()>>,
) -> Result<Response, SqlError> {
    Ok(match prepared {
        Prepared::Query(query) => {
            let stream = session.execute(&query, params).await?;
            Response::Query(query_response(stream, format, options, cancel)?)
        }
        Prepared::Set { .. } => Response::Execution(Tag::new("SET")),
        Prepared::Show { name, value } => Response::Query(show_response(&name, &value, format)?),
        Prepared::Command("BEGIN") => Response::TransactionStart(Tag::new("BEGIN")),
        Prepared::Command(tag @ ("COMMIT" | "ROLLBACK")) => Response::TransactionEnd(Tag::new(tag)),
        Prepared::Command(tag) => Response::Execution(Tag::new(tag)),
    })
}

/// The handlers pgwire asks for, once per connection: all the connection.
pub struct Handlers(pub(crate) Arc<Connection>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.0.shared.connections.clone()))
    }
}

/// A receiver that fires when the client's cancel request arrives (pgwire
/// keeps one per connection; each query takes a new one).
async fn cancel_signal<C: ClientInfo>(client: &C) -> Option<futures::channel::oneshot::Receiver<()>> {
    let handle = client.session_extensions().get::<Arc<ConnectionHandle>>()?;
    Some(handle.start_query().await)
}

fn user_of<C: ClientInfo>(client: &C) -> Option<String> {
    client.metadata().get(METADATA_USER).cloned()
}

/// Server parameters sent after login (what drivers read at connect).
fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = "16.0 (fhirlake)".into();
    parameters.search_path = "public, fhir".into();
    parameters.default_transaction_read_only = true;
    parameters
}

impl Connection {
    /// Registers the connection for cancel requests and sends the
    /// login's server parameters.
    async fn finish_login<C>(&self, client: &mut C, login: fhirlake_engine::sql::Login) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret_key) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret_key.clone());
        let (handle, guard) = self.shared.connections.register(pid, secret_key);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        self.start_session(login).await;
        finish_authentication(client, &server_parameters()).await
    }
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                match &self.shared.authentication {
                    LoginRule::Off => {
                        let login = login::local(user_of(client).as_deref());
                        self.finish_login(client, login).await?;
                    }
                    LoginRule::AccessToken(_) => {
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        client
                            .send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword))
                            .await?;
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(password) => {
                let LoginRule::AccessToken(issuer) = &self.shared.authentication else {
                    return Ok(());
                };
                let password = password.into_password()?;
                match login::check_token(issuer, user_of(client).as_deref(), &password.password) {
                    Ok(login) => self.finish_login(client, login).await?,
                    Err(message) => {
                        tracing::info!(target: "fhirlake::audit", event = "pg_login_refused", user = user_of(client).as_deref().unwrap_or("-"), reason = %message);
                        return Err(wire_fatal("28P01", message));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// A login failure: FATAL, which closes the connection.
fn wire_fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(pgwire::error::ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message,
    )))
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = Connection::parse(query).map_err(to_wire)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(not_logged_in)?;
        let mut responses = Vec::with_capacity(statements.len());
        for statement in statements {
            match self.run(session, statement, format.clone()).await {
                Ok(response) => responses.push(response),
                // Postgres stops a multi-statement query at its first error.
                Err(e) => {
                    let PgWireError::UserError(info) = to_wire(e) else {
                        break;
                    };
                    responses.push(Response::Error(info));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

fn not_logged_in() -> PgWireError {
    wire_error("08P01", "the connection has not logged in")
}

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = Connection::parse(sql).map_err(to_wire)?;
        if statements.len() > 1 {
            return Err(wire_error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        if answers_itself(&statement) {
            return Ok(Some(PgStatement::Session {
                statement: Box::new(statement),
            }));
        }
        let connection = self.connection.upgrade().ok_or_else(not_logged_in)?;
        let mut guard = connection.session.lock().await;
        let session = guard.as_mut().ok_or_else(not_logged_in)?;
        let text = statement.to_string();
        let placeholders = crate::deferred::placeholder_count(&statement);
        match session
            .prepare(DfStatement::Statement(Box::new(statement.clone())), &text)
            .await
        {
            Ok(Prepared::Query(query)) => Ok(Some(PgStatement::Query(Box::new(query)))),
            Ok(_) => Err(wire_error("XX000", "a session statement was planned as a query")),
            // Plannable only with its values (`cohort($1)`): at Bind.
            Err(SqlError::Query(_)) if placeholders > 0 => Ok(Some(PgStatement::Deferred {
                statement: Box::new(statement),
            })),
            Err(e) => Err(to_wire(e)),
        }
    }

    fn get_parameter_types(&self, statement: &PgStatement) -> PgWireResult<Vec<Type>> {
        match statement {
            PgStatement::Query(query) => Ok(parameter_types(query)?.into_iter().map(|(_, t)| t).collect()),
            PgStatement::Session { .. } => Ok(Vec::new()),
            PgStatement::Deferred { statement } => {
                Ok(vec![Type::UNKNOWN; crate::deferred::placeholder_count(statement)])
            }
        }
    }

    fn get_result_schema(&self, statement: &PgStatement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        let format = format.unwrap_or(&Format::UnifiedText);
        match statement {
            PgStatement::Query(query) => Ok(arrow_pg::datatypes::arrow_schema_to_pg_fields(
                query.plan().schema().as_arrow(),
                format,
                None,
            )?),
            PgStatement::Session { statement } => match statement.as_ref() {
                Statement::ShowVariable { variable } => {
                    let name = variable.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join(" ");
                    Ok(show_fields(&fhirlake_engine::sql::canonical_name(&name), format))
                }
                _ => Ok(Vec::new()),
            },
            // Known once bound (Describe of the portal).
            PgStatement::Deferred { .. } => Ok(Vec::new()),
        }
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = PgStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        self.parser.clone()
    }

    /// Streams a whole result (`max_rows` 0, what psycopg and libpq ask
    /// for) with backpressure: pgwire's default collects every row of
    /// the portal in memory first. Partial fetches (`max_rows` > 0, JDBC's
    /// fetch size) hold at most that many rows and take pgwire's path.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal = match client.portal_store().get_portal(name) {
            Some(Entry::Value(portal)) => portal,
            _ => return self._on_execute(client, message).await,
        };
        let fresh = matches!(*portal.state().lock().await, PortalExecutionState::Initial);
        let is_query = matches!(
            portal.statement.statement,
            PgStatement::Query(_) | PgStatement::Deferred { .. }
        );
        if message.max_rows > 0 || !fresh || !is_query {
            return self._on_execute(client, message).await;
        }
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        client.set_state(PgWireConnectionState::QueryInProgress);
        *self.stream_cancel.lock().await = cancel_signal(client).await;
        let response = ExtendedQueryHandler::do_query(self, client, portal.as_ref(), 0).await;
        client.set_state(PgWireConnectionState::ReadyForQuery);
        match response? {
            Response::Query(results) => {
                *portal.state().lock().await = PortalExecutionState::Finished;
                send_query_response(client, results, false).await
            }
            _ => Err(wire_error("XX000", "a query answered without rows")),
        }
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parameters = self.parser.get_parameter_types(&target.statement)?;
        let fields = self.parser.get_result_schema(&target.statement, None)?;
        Ok(DescribeStatementResponse::new(parameters, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        target: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgStatement::Deferred { statement } = &target.statement.statement {
            let query = self.plan_bound(statement, target).await?;
            let fields = arrow_pg::datatypes::arrow_schema_to_pg_fields(
                query.plan().schema().as_arrow(),
                &target.result_column_format,
                None,
            )?;
            return Ok(DescribePortalResponse::new(fields));
        }
        let fields = self
            .parser
            .get_result_schema(&target.statement.statement, Some(&target.result_column_format))?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        // Set by the streaming `on_execute` (pgwire's own path watches
        // for cancel requests while this runs).
        let cancel = self.stream_cancel.lock().await.take();
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(not_logged_in)?;
        let result = match &portal.statement.statement {
            PgStatement::Query(query) => {
                let params = parameter_values(query, portal)?;
                respond(
                    session,
                    Prepared::Query(query.as_ref().clone()),
                    Some(params),
                    &portal.result_column_format,
                    format,
                    cancel,
                )
                .await
            }
            PgStatement::Deferred { statement } => {
                drop(guard);
                let query = self.plan_bound(statement, portal).await?;
                let mut guard = self.session.lock().await;
                let session = guard.as_mut().ok_or_else(not_logged_in)?;
                respond(
                    session,
                    Prepared::Query(query),
                    None,
                    &portal.result_column_format,
                    format,
                    cancel,
                )
                .await
            }
            PgStatement::Session { statement } => {
                let sql = statement.to_string();
                match session.prepare(DfStatement::Statement(statement.clone()), &sql).await {
                    Ok(prepared) => respond(session, prepared, None, &portal.result_column_format, format, None).await,
                    Err(e) => Err(e),
                }
            }
        };
        result.map_err(to_wire)
    }
}
