//! `gatewayctl`, the gateway's admin CLI.
//!
//! This crate owns the command line: it parses the commands, calls the admin gRPC API of any
//! node (the node forwards writes to the leader), and prints the result as a table or, with
//! `-o json`, as JSON for scripts. Any error exits non-zero with the server's message.

mod call;
mod config;
mod docs;
mod money;
mod openapi;
mod output;
mod throttle;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use loadtest::parse_duration;
use output::{Format, Table, print};
use proto::admin as pb;
use proto::admin::admin_client::AdminClient;
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(name = "gatewayctl", version, about = "Administer a gateway cluster")]
pub struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        global = true,
        value_enum,
        default_value = "table"
    )]
    output: Format,
    #[command(subcommand)]
    command: Cmd,
}

/// Where and how to reach the admin API.
#[derive(Debug, Args)]
struct Conn {
    /// The admin API of any node.
    #[arg(
        long,
        global = true,
        env = "GATEWAY_ENDPOINT",
        default_value = "http://127.0.0.1:9090"
    )]
    endpoint: String,
    /// A file holding the bearer token (else GATEWAY_TOKEN).
    #[arg(long, global = true, env = "GATEWAY_TOKEN_FILE")]
    token_file: Option<std::path::PathBuf>,
    /// The CA bundle (PEM) the admin API's certificate must chain to; needed with an https://
    /// endpoint.
    #[arg(long, global = true, env = "GATEWAY_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// How long to wait for the server's answer, in seconds.
    #[arg(long, global = true, default_value_t = 15)]
    rpc_timeout: u64,
    /// How fresh reads must be: `linearizable` sees every write acknowledged before the read
    /// began, on any node (one round trip to the leader, needs a quorum); `local` reads what
    /// the node asked has applied, which may lag, but is cheap and works without a quorum.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "GATEWAY_CONSISTENCY",
        default_value = "linearizable"
    )]
    consistency: Consistency,
}

/// How fresh an admin read must be (see `--consistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Consistency {
    Linearizable,
    Local,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Dedicated instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// The instance specs on offer.
    #[command(subcommand)]
    Spec(ListOnly),
    /// The regions on offer.
    #[command(subcommand)]
    Region(ListOnly),
    /// API groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// APIs and their deployments.
    #[command(subcommand)]
    Api(ApiCmd),
    /// Cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Accounts: balances, alerts, recharges.
    #[command(subcommand)]
    Account(money::AccountCmd),
    /// Metered usage by day, account, instance and API.
    Usage(money::UsageArgs),
    /// Daily bills.
    #[command(subcommand)]
    Bill(money::BillCmd),
    /// Account events (alerts, suspension, restoration, purge).
    Events(money::EventsArgs),
    /// Prices (offline: no server needed).
    #[command(subcommand)]
    Pricing(money::PricingCmd),
    /// Apps: callers of APIs whose auth type is APP (signed requests).
    #[command(subcommand)]
    App(AppCmd),
    /// Admin API tokens for accounts (operator only).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Throttling policies: per-API, per-account and per-app limits of calls per unit.
    #[command(subcommand)]
    Throttle(throttle::ThrottleCmd),
    /// Write every API group, API, deployment, IP access control and app grant as one
    /// document: YAML (the default) or JSON (-o json).
    Export(config::ExportArgs),
    /// Show what `apply -f FILE` would change, object by object (nothing is written).
    Diff(config::ApplyArgs),
    /// Make the cluster match a document, in one atomic write: all of it, or nothing and
    /// every problem listed. What the file does not name is left alone unless --prune.
    Apply {
        #[command(flatten)]
        args: config::ApplyArgs,
        /// Check everything on the server and show what would change, without writing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create APIs from another format.
    #[command(subcommand)]
    Import(openapi::ImportCmd),
    /// Send one request through the gateway, signed with an app's key when given.
    Call(call::CallArgs),
    /// Check a running cluster against an instance spec's SLA (open-loop load test).
    Loadtest(Box<loadtest::LoadtestArgs>),
    /// Print a shell completion script: `gatewayctl completions bash > /etc/bash_completion.d/gatewayctl`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
    /// Write man pages (gatewayctl.1 and one per subcommand) into a directory.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ListOnly {
    /// List them.
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ChargeArg {
    Postpaid,
    Month,
    Year,
}

#[derive(Debug, Subcommand)]
enum InstanceCmd {
    /// Create a dedicated instance (pay-as-you-go, or a monthly or annual subscription paid now).
    Create {
        /// The instance's name.
        #[arg(long)]
        name: String,
        /// A spec from `gatewayctl spec list`, e.g. api.s1.small.
        #[arg(long)]
        spec: String,
        /// A region from `gatewayctl region list`, e.g. cn-hongkong.
        #[arg(long)]
        region: String,
        /// How it is paid: by the hour, or a month or a year up front.
        #[arg(long, value_enum, default_value = "postpaid")]
        charge_type: ChargeArg,
        /// The owning account (operators only; empty: the default account, or your own).
        #[arg(long, default_value = "")]
        account: String,
        /// Renew the subscription from the balance at the end of each term (month or year).
        /// Without it, a term that ends unrenewed stops the instance, and it is released 7
        /// days later.
        #[arg(long)]
        auto_renew: bool,
    },
    /// List the instances you may see.
    List,
    /// Show one instance: spec, ceiling, region, charge type, term end, running or stopped.
    Get {
        /// The instance's name.
        #[arg(long)]
        name: String,
    },
    /// Change an instance's spec; every node enforces the new ceiling within about a second.
    ModifySpec {
        /// The instance's name.
        #[arg(long)]
        name: String,
        /// A spec from `gatewayctl spec list`, e.g. api.s1.small.
        #[arg(long)]
        spec: String,
    },
    /// Release an instance (refused while it hosts API groups).
    Delete {
        /// The instance's name.
        #[arg(long)]
        name: String,
    },
    /// Pay another subscription term from the account's balance, at the catalog's price. It
    /// runs on from the end of the paid term (or from now, for an instance stopped at the end
    /// of its term, which starts it again).
    Renew {
        /// The instance's name.
        #[arg(long)]
        name: String,
        /// Renew for this many months.
        #[arg(long, group = "term", required = true)]
        months: Option<u32>,
        /// Renew for this many years.
        #[arg(long, group = "term", required = true)]
        years: Option<u32>,
        /// Names the renewal so that retrying it pays at most once: after an "outcome
        /// unknown" error, retry with the id the error gave.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Turn a subscription's automatic renewal on or off.
    SetAutoRenew {
        /// The instance's name.
        #[arg(long)]
        name: String,
        /// true or false.
        #[arg(long, action = clap::ArgAction::Set)]
        auto_renew: bool,
    },
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create an API group on the shared instance or a dedicated one.
    Create {
        /// The API group's name.
        #[arg(long)]
        name: String,
        /// `shared` or a dedicated instance.
        #[arg(long, default_value = "shared")]
        instance: String,
        /// Match only requests for this Host (empty: any host).
        #[arg(long)]
        host: Option<String>,
        /// Match only paths under this prefix, e.g. /shop (stripped before forwarding).
        #[arg(long)]
        base_path: Option<String>,
        /// The owning account (operators only; empty: the default account, or your own).
        #[arg(long, default_value = "")]
        account: String,
    },
    /// Change a group's instance, host or base path (an empty value removes host or base path).
    Modify {
        /// The API group's name.
        #[arg(long)]
        name: String,
        /// `shared` or a dedicated instance to move the group to.
        #[arg(long)]
        instance: Option<String>,
        /// Match only requests for this Host (empty: any host).
        #[arg(long)]
        host: Option<String>,
        /// Match only paths under this prefix, e.g. /shop (stripped before forwarding).
        #[arg(long)]
        base_path: Option<String>,
    },
    /// List the API groups you may see.
    List,
    /// Show one API group, its APIs and deployments.
    Get {
        /// The API group's name.
        #[arg(long)]
        name: String,
    },
    /// Delete an API group and its APIs; refused while any is deployed unless --force.
    Delete {
        /// The API group's name.
        #[arg(long)]
        name: String,
        /// Delete even while APIs are deployed: their calls then get 404.
        #[arg(long)]
        force: bool,
    },
    /// Set the group's IP access control (comma-separated CIDRs; deny wins; no allow list
    /// allows everyone not denied).
    SetAcl {
        /// The API group's name.
        #[arg(long)]
        name: String,
        /// CIDRs allowed, comma-separated (empty: everyone not denied).
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// CIDRs denied, comma-separated (deny wins).
        #[arg(long, value_delimiter = ',')]
        deny: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct ApiDef {
    /// The HTTP method, e.g. GET.
    #[arg(long)]
    method: String,
    /// The path pattern after the group's base path, e.g. /items/{id}.
    #[arg(long)]
    path: String,
    /// Where calls go: http://HOST:PORT[/prefix] (the prefix is prepended to the path), with
    /// an optional weight 1..=1000 after `@` (default 1). Repeat for several backends: calls
    /// are spread over them in proportion to their weights.
    #[arg(long = "backend", value_name = "URL[@WEIGHT]", required = true, value_parser = parse_backend)]
    backends: Vec<model::WeightedBackend>,
    /// Backend timeout, e.g. 5s, 300ms.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    /// ANONYMOUS, or APP: only authorised apps, with signed requests.
    #[arg(long, default_value = "ANONYMOUS")]
    auth_type: String,
    /// The backend is in this region (a region id such as cn-shanghai). When it is not the
    /// instance's region, the bytes read back from it are billed as backend traffic. Without
    /// this or --backend-external the backend is local: in the instance's region, not billed.
    #[arg(long, value_name = "REGION", conflicts_with = "backend_external")]
    backend_region: Option<String>,
    /// The backend is outside the cloud: the bytes read back from it are billed as backend
    /// traffic.
    #[arg(long)]
    backend_external: bool,
}

#[derive(Debug, Subcommand)]
enum ApiCmd {
    /// Define an API in a group (not served until deployed).
    Create {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        def: ApiDef,
    },
    /// Change an API's definition (deployed stages keep theirs until deployed again).
    #[command(visible_alias = "update")]
    Modify {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        def: ApiDef,
    },
    /// List the APIs of one group, or of every group you may see.
    List {
        /// The API group.
        #[arg(long, default_value = "")]
        group: String,
    },
    /// Show one API's definition and where it is deployed.
    Get {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
    },
    /// Delete an API (refused while it is deployed).
    Delete {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
    },
    /// Deploy the API's current definition to a stage: traffic sees it at once.
    Deploy {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// RELEASE, PRE or TEST (a request picks its stage with X-Ca-Stage).
        #[arg(long, default_value = "RELEASE")]
        stage: String,
    },
    /// Take the API off a stage: its calls then get 404.
    Abolish {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// RELEASE, PRE or TEST (a request picks its stage with X-Ca-Stage).
        #[arg(long, default_value = "RELEASE")]
        stage: String,
    },
    /// Let an app call the API.
    Authorize {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// The app's name.
        #[arg(long)]
        app: String,
    },
    /// Take an app's authorisation away.
    Revoke {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// The app's name.
        #[arg(long)]
        app: String,
    },
    /// Set the API's own IP access control, checked after its group's (comma-separated
    /// CIDRs; deny wins; no allow list allows everyone not denied; neither removes it).
    SetAcl {
        /// The API group.
        #[arg(long)]
        group: String,
        /// The API's name.
        #[arg(long)]
        name: String,
        /// CIDRs allowed, comma-separated (empty: everyone not denied).
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        /// CIDRs denied, comma-separated (deny wins).
        #[arg(long, value_delimiter = ',')]
        deny: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AppCmd {
    /// Create an app; its AppKey and AppSecret are printed (the secret only now).
    Create {
        /// The app's name.
        #[arg(long)]
        name: String,
        /// The owning account (operators only; empty: the default account, or your own).
        #[arg(long, default_value = "")]
        account: String,
    },
    /// List the apps you may see.
    List,
    /// Delete an app: its key stops working at once.
    Delete {
        /// The app's name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCmd {
    /// Create a token that acts for one account; it is printed once.
    Create {
        /// The account the token acts for.
        #[arg(long)]
        account: String,
    },
    /// List the tokens (ids and accounts, never the secrets).
    List {
        /// The account the token acts for.
        #[arg(long, default_value = "")]
        account: String,
    },
    /// Revoke a token: it stops working at once.
    Revoke {
        /// The token's id, as `token list` shows it.
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCmd {
    /// The cluster as the node sees it. Exits non-zero, after printing it, when the node knows
    /// no leader or has no contact with a quorum (it cannot accept writes), or does not serve
    /// API traffic.
    Status,
    /// Add a node as a learner (it receives everything and serves, but does not vote).
    AddLearner {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
        /// The learner's peer address, HOST:PORT.
        #[arg(long)]
        peer_addr: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
    },
    /// Take a node out of the cluster; it stops serving (see README, Membership).
    Remove {
        /// The node's id.
        #[arg(long)]
        node_id: u64,
    },
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token and the read consistency to every call.
#[derive(Clone)]
struct Auth {
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    local_reads: bool,
}

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.token {
            req.metadata_mut().insert("authorization", v.clone());
        }
        if self.local_reads {
            req.metadata_mut()
                .insert(CONSISTENCY_HEADER, MetadataValue::from_static("local"));
        }
        Ok(req)
    }
}

/// The admin service's read-consistency metadata (`admin::CONSISTENCY_HEADER`; gatewayctl
/// does not link the server crate).
const CONSISTENCY_HEADER: &str = "x-consistency";

fn token(cli: &Conn) -> Result<Option<String>> {
    if let Some(path) = &cli.token_file {
        let t = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --token-file {}", path.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    Ok(std::env::var("GATEWAY_TOKEN")
        .ok()
        .filter(|t| !t.is_empty()))
}

async fn connect(cli: &Conn) -> Result<Client> {
    let endpoint = tonic::transport::Endpoint::from_shared(cli.endpoint.clone())
        .with_context(|| format!("invalid --endpoint {}", cli.endpoint))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(cli.rpc_timeout));
    let https = endpoint.uri().scheme_str() == Some("https");
    let connected = match (&cli.tls_ca, https) {
        (Some(ca), true) => {
            let tls = tls::ClientFiles {
                ca: ca.clone(),
                identity: None,
            }
            .load("admin connection", tls::ALPN_H2)
            .context("--tls-ca")?;
            endpoint
                .connect_with_connector(tls::Connector::new(tls))
                .await
        }
        (None, true) => bail!(
            "--endpoint {} is https: give --tls-ca (or GATEWAY_TLS_CA) with the CA that issued the admin API's certificate",
            cli.endpoint
        ),
        (Some(_), false) => bail!(
            "--tls-ca is given but --endpoint {} is not https://",
            cli.endpoint
        ),
        (None, false) => endpoint.connect().await,
    };
    let channel = connected.map_err(|e| {
        anyhow::anyhow!(
            "no gatewayd admin API at {}: {}: is the node running? is --endpoint the admin port \
             (gatewayd --listen-admin, default 127.0.0.1:9090), not the data-plane or peer port?",
            cli.endpoint,
            root_cause(&e)
        )
    })?;
    let token = match token(cli)? {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the token has characters that cannot be sent")?,
        ),
        None => None,
    };
    let auth = Auth {
        token,
        local_reads: cli.consistency == Consistency::Local,
    };
    // Room for a whole cluster's configuration document (export, apply).
    Ok(AdminClient::with_interceptor(channel, auth)
        .max_decoding_message_size(model::config::MAX_DOCUMENT_BYTES)
        .max_encoding_message_size(model::config::MAX_DOCUMENT_BYTES))
}

/// The innermost error of a chain: for a refused connection, "Connection refused (os error
/// 111)" rather than three layers of "transport error".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut root = e;
    while let Some(source) = root.source() {
        root = source;
    }
    root.to_string()
}

/// What an error from a server that is not the admin API says, explained: the data-plane port
/// answers gRPC's HTTP/2 with its own JSON (`invalid compression flag: 123` is its `{`), and
/// the peer port serves other gRPC services.
fn explain_status(status: &tonic::Status, endpoint: &str) -> Option<String> {
    let message = status.message();
    let not_grpc = message.contains("compression flag")
        || message.contains("grpc-status header missing")
        || message.contains("content-type");
    if not_grpc {
        return Some(format!(
            "the server at {endpoint} answered with plain HTTP, not as the gatewayd admin API: \
             is --endpoint the data-plane port (--listen-http)? Use the admin port (gatewayd \
             --listen-admin, default 127.0.0.1:9090)"
        ));
    }
    // The admin API implements every call gatewayctl makes: another gRPC server answered.
    if status.code() == tonic::Code::Unimplemented {
        return Some(format!(
            "the server at {endpoint} does not serve the gatewayd admin API: is --endpoint the \
             peer port (--listen-peer)? Use the admin port (gatewayd --listen-admin, default \
             127.0.0.1:9090)"
        ));
    }
    None
}

/// Runs the CLI and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let endpoint = cli.conn.endpoint.clone();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => match explain_status(s, &endpoint) {
                    Some(explained) => eprintln!("error: {explained}"),
                    None => eprintln!("error: {:?}: {}", s.code(), s.message()),
                },
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let Cli {
        conn,
        output: f,
        command,
    } = cli;
    // Commands that need no server.
    let command = match command {
        Cmd::Pricing(money::PricingCmd::Estimate(a)) => return money::estimate(f, a),
        Cmd::Loadtest(args) => return run_loadtest(&conn, *args).await,
        Cmd::Call(a) => return call::call(f, a).await,
        Cmd::Completions { shell } => return docs::completions(shell, &mut std::io::stdout()),
        Cmd::Man { dir } => return docs::man_pages(&dir),
        other => other,
    };
    // Refused before any server is asked.
    if let Cmd::Account(money::AccountCmd::Recharge { name, amount, .. }) = &command
        && amount.trim_start().starts_with('-')
    {
        bail!(
            "invalid --amount {amount}: a recharge adds money, so the amount must be positive; to debit an account use `account adjust --name {name} --amount {amount} --reason ...`"
        );
    }
    let mut c = connect(&conn).await?;
    match command {
        Cmd::Pricing(_)
        | Cmd::Loadtest(_)
        | Cmd::Call(_)
        | Cmd::Completions { .. }
        | Cmd::Man { .. } => unreachable!("handled above"),
        Cmd::Account(cmd) => money::account(&mut c, f, cmd).await,
        Cmd::Usage(a) => money::usage(&mut c, f, a).await,
        Cmd::Bill(cmd) => money::bill(&mut c, f, cmd).await,
        Cmd::Events(a) => money::events(&mut c, f, a).await,
        Cmd::Token(cmd) => tokens(&mut c, f, cmd).await,
        Cmd::App(cmd) => apps(&mut c, f, cmd).await,
        Cmd::Throttle(cmd) => throttle::run(&mut c, f, cmd).await,
        Cmd::Instance(cmd) => instance(&mut c, f, cmd).await,
        Cmd::Spec(ListOnly::List) => {
            let specs = c
                .describe_specs(pb::DescribeSpecsRequest {})
                .await?
                .into_inner()
                .specs;
            let v = json!(
                specs
                    .iter()
                    .map(|s| json!({"name": s.name, "max_rps": s.max_rps, "sla": s.sla}))
                    .collect::<Vec<_>>()
            );
            print(f, v, || {
                let mut t = Table::new(&["SPEC", "MAX RPS", "SLA"]);
                for s in &specs {
                    t.row(vec![s.name.clone(), s.max_rps.to_string(), s.sla.clone()]);
                }
                t
            });
            Ok(())
        }
        Cmd::Region(ListOnly::List) => {
            let regions = c
                .describe_regions(pb::DescribeRegionsRequest {})
                .await?
                .into_inner()
                .regions;
            let v = json!(
                regions
                    .iter()
                    .map(|r| json!({"id": r.id, "name": r.name}))
                    .collect::<Vec<_>>()
            );
            print(f, v, || {
                let mut t = Table::new(&["REGION", "NAME"]);
                for r in &regions {
                    t.row(vec![r.id.clone(), r.name.clone()]);
                }
                t
            });
            Ok(())
        }
        Cmd::Group(cmd) => group(&mut c, f, cmd).await,
        Cmd::Api(cmd) => api(&mut c, f, cmd).await,
        Cmd::Cluster(cmd) => cluster(&mut c, f, cmd).await,
        Cmd::Export(a) => config::export(&mut c, f, a).await,
        Cmd::Diff(a) => config::diff(&mut c, f, a).await,
        Cmd::Apply { args, dry_run } => config::apply(&mut c, f, args, dry_run).await,
        Cmd::Import(openapi::ImportCmd::Openapi(a)) => openapi::import(&mut c, f, a).await,
    }
}

/// Runs a load test; a mid-run spec change goes through the admin API at `--endpoint`.
async fn run_loadtest(conn: &Conn, args: loadtest::LoadtestArgs) -> Result<()> {
    let changer: Option<Box<dyn loadtest::SpecChanger>> = match &args.instance {
        Some(instance) if args.modify_spec_at.is_some() => {
            let client = connect(conn).await?;
            let instance = instance.clone();
            let endpoint = conn.endpoint.clone();
            Some(Box::new(move |spec: String| {
                let mut client = client.clone();
                let name = instance.clone();
                let endpoint = endpoint.clone();
                async move {
                    client
                        .modify_instance_spec(pb::ModifyInstanceSpecRequest { name, spec })
                        .await
                        .map(|_| ())
                        .map_err(|s| format!("ModifyInstanceSpec at {endpoint}: {}", s.message()))
                }
            }))
        }
        _ => None,
    };
    let all_pass = loadtest::run_cli(args, changer).await?;
    if !all_pass {
        bail!("the load test failed its SLA verdicts");
    }
    Ok(())
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS`.
pub(crate) fn ms_to_utc(ms: u64) -> String {
    billing::Timestamp::from_unix_secs(ms / 1000).to_string()
}

fn print_instance(f: Format, i: Option<pb::Instance>) -> Result<()> {
    let Some(i) = i else {
        bail!("the server returned no instance")
    };
    print(f, output::instance_json(&i), || {
        output::instances_table(std::slice::from_ref(&i))
    });
    Ok(())
}

fn print_deleted(f: Format, d: pb::DeleteReply) {
    print(f, json!({"deleted": d.kind, "name": d.name}), || {
        let mut t = Table::new(&["DELETED", "NAME"]);
        t.row(vec![d.kind.clone(), d.name.clone()]);
        t
    });
}

async fn instance(c: &mut Client, f: Format, cmd: InstanceCmd) -> Result<()> {
    match cmd {
        InstanceCmd::Create {
            name,
            spec,
            region,
            charge_type,
            account,
            auto_renew,
        } => {
            let charge_type = match charge_type {
                ChargeArg::Postpaid => pb::ChargeType::Postpaid,
                ChargeArg::Month => pb::ChargeType::Month,
                ChargeArg::Year => pb::ChargeType::Year,
            } as i32;
            let r = c
                .create_instance(pb::CreateInstanceRequest {
                    name,
                    spec,
                    region,
                    charge_type,
                    account,
                    auto_renew,
                })
                .await?;
            print_instance(f, r.into_inner().instance)
        }
        InstanceCmd::Renew {
            name,
            months,
            years,
            request_id,
        } => {
            let r = c
                .renew_instance(pb::RenewInstanceRequest {
                    name,
                    months: months.unwrap_or(0),
                    years: years.unwrap_or(0),
                    request_id,
                })
                .await?;
            print_instance(f, r.into_inner().instance)
        }
        InstanceCmd::SetAutoRenew { name, auto_renew } => {
            let r = c
                .set_instance_auto_renew(pb::SetInstanceAutoRenewRequest { name, auto_renew })
                .await?;
            print_instance(f, r.into_inner().instance)
        }
        InstanceCmd::List => {
            let list = c
                .describe_instances(pb::DescribeInstancesRequest::default())
                .await?
                .into_inner()
                .instances;
            let v = json!(list.iter().map(output::instance_json).collect::<Vec<_>>());
            print(f, v, || output::instances_table(&list));
            Ok(())
        }
        InstanceCmd::Get { name } => {
            let mut list = c
                .describe_instances(pb::DescribeInstancesRequest { name })
                .await?
                .into_inner()
                .instances;
            print_instance(f, list.pop())
        }
        InstanceCmd::ModifySpec { name, spec } => {
            let r = c
                .modify_instance_spec(pb::ModifyInstanceSpecRequest { name, spec })
                .await?;
            print_instance(f, r.into_inner().instance)
        }
        InstanceCmd::Delete { name } => {
            let r = c
                .delete_instance(pb::DeleteInstanceRequest { name })
                .await?;
            print_deleted(f, r.into_inner());
            Ok(())
        }
    }
}

fn print_group(f: Format, g: Option<pb::ApiGroup>) -> Result<()> {
    let Some(g) = g else {
        bail!("the server returned no group")
    };
    print(f, output::group_json(&g), || {
        output::groups_table(std::slice::from_ref(&g))
    });
    Ok(())
}

async fn group(c: &mut Client, f: Format, cmd: GroupCmd) -> Result<()> {
    match cmd {
        GroupCmd::Create {
            name,
            instance,
            host,
            base_path,
            account,
        } => {
            let r = c
                .create_api_group(pb::CreateApiGroupRequest {
                    name,
                    instance,
                    host,
                    base_path,
                    account,
                })
                .await?;
            print_group(f, r.into_inner().group)
        }
        GroupCmd::Modify {
            name,
            instance,
            host,
            base_path,
        } => {
            let r = c
                .modify_api_group(pb::ModifyApiGroupRequest {
                    name,
                    instance,
                    host,
                    base_path,
                })
                .await?;
            print_group(f, r.into_inner().group)
        }
        GroupCmd::List => {
            let list = c
                .describe_api_groups(pb::DescribeApiGroupsRequest::default())
                .await?
                .into_inner()
                .groups;
            let v = json!(list.iter().map(output::group_json).collect::<Vec<_>>());
            print(f, v, || output::groups_table(&list));
            Ok(())
        }
        GroupCmd::Get { name } => {
            let mut list = c
                .describe_api_groups(pb::DescribeApiGroupsRequest { name })
                .await?
                .into_inner()
                .groups;
            print_group(f, list.pop())
        }
        GroupCmd::Delete { name, force } => {
            let r = c
                .delete_api_group(pb::DeleteApiGroupRequest { name, force })
                .await?;
            print_deleted(f, r.into_inner());
            Ok(())
        }
        GroupCmd::SetAcl { name, allow, deny } => {
            let req = pb::SetIpAccessControlRequest {
                group: name,
                api: String::new(),
                allow,
                deny,
            };
            set_acl(c, f, req).await
        }
    }
}

/// Sets the IP access control of a group (`api` empty) or of one API, and prints the group.
async fn set_acl(c: &mut Client, f: Format, req: pb::SetIpAccessControlRequest) -> Result<()> {
    let r = c.set_ip_access_control(req).await?;
    print_group(f, r.into_inner().group)
}

fn parse_backend(s: &str) -> Result<model::WeightedBackend, String> {
    model::WeightedBackend::parse(s)
}

fn definition(d: ApiDef) -> Option<pb::ApiDefinition> {
    Some(pb::ApiDefinition {
        method: d.method.to_ascii_uppercase(),
        path: d.path,
        backend: String::new(),
        backends: d
            .backends
            .into_iter()
            .map(|b| pb::WeightedBackend {
                url: b.url,
                weight: Some(b.weight),
            })
            .collect(),
        timeout_ms: d.timeout.as_millis() as u64,
        auth_type: d.auth_type.to_ascii_uppercase(),
        backend_location: match (d.backend_region, d.backend_external) {
            (_, true) => "external".into(),
            (Some(region), false) => region,
            (None, false) => String::new(),
        },
    })
}

fn print_api(f: Format, a: Option<pb::Api>) -> Result<()> {
    let Some(a) = a else {
        bail!("the server returned no API")
    };
    print(f, output::api_json(&a), || {
        output::apis_table(std::slice::from_ref(&a))
    });
    Ok(())
}

async fn api(c: &mut Client, f: Format, cmd: ApiCmd) -> Result<()> {
    match cmd {
        ApiCmd::Create { group, name, def } => {
            let r = c
                .create_api(pb::CreateApiRequest {
                    group,
                    name,
                    definition: definition(def),
                })
                .await?;
            print_api(f, r.into_inner().api)
        }
        ApiCmd::Modify { group, name, def } => {
            let r = c
                .modify_api(pb::ModifyApiRequest {
                    group,
                    name,
                    definition: definition(def),
                })
                .await?;
            print_api(f, r.into_inner().api)
        }
        ApiCmd::List { group } => {
            let list = c
                .describe_apis(pb::DescribeApisRequest {
                    group,
                    name: String::new(),
                })
                .await?
                .into_inner()
                .apis;
            let v = json!(list.iter().map(output::api_json).collect::<Vec<_>>());
            print(f, v, || output::apis_table(&list));
            Ok(())
        }
        ApiCmd::Get { group, name } => {
            let mut list = c
                .describe_apis(pb::DescribeApisRequest { group, name })
                .await?
                .into_inner()
                .apis;
            print_api(f, list.pop())
        }
        ApiCmd::Delete { group, name } => {
            let r = c.delete_api(pb::DeleteApiRequest { group, name }).await?;
            print_deleted(f, r.into_inner());
            Ok(())
        }
        ApiCmd::Deploy { group, name, stage } => {
            let r = c
                .deploy_api(pb::DeployApiRequest { group, name, stage })
                .await?
                .into_inner();
            let d = r.deployment.unwrap_or_default();
            let mut v = output::deployment_json(&d);
            v["group"] = json!(r.group);
            print(f, v, || {
                let mut t = Table::new(&["GROUP", "API", "STAGE", "DEPLOYED AT"]);
                t.row(vec![
                    r.group.clone(),
                    d.api.clone(),
                    d.stage.clone(),
                    ms_to_utc(d.deployed_at_ms),
                ]);
                t
            });
            Ok(())
        }
        ApiCmd::Authorize { group, name, app } => {
            let r = c
                .authorize_app(pb::AuthorizeAppRequest {
                    group,
                    api: name,
                    app,
                })
                .await?;
            print_group(f, r.into_inner().group)
        }
        ApiCmd::Revoke { group, name, app } => {
            let r = c
                .revoke_app_authorization(pb::AuthorizeAppRequest {
                    group,
                    api: name,
                    app,
                })
                .await?;
            print_group(f, r.into_inner().group)
        }
        ApiCmd::SetAcl {
            group,
            name,
            allow,
            deny,
        } => {
            let req = pb::SetIpAccessControlRequest {
                group,
                api: name,
                allow,
                deny,
            };
            set_acl(c, f, req).await
        }
        ApiCmd::Abolish { group, name, stage } => {
            let r = c
                .abolish_api(pb::AbolishApiRequest { group, name, stage })
                .await?;
            print_deleted(f, r.into_inner());
            Ok(())
        }
    }
}

async fn apps(c: &mut Client, f: Format, cmd: AppCmd) -> Result<()> {
    let table = |list: &[pb::App]| {
        let mut t = Table::new(&["APP", "ACCOUNT", "APP KEY", "CREATED (UTC)"]);
        for a in list {
            t.row(vec![
                a.name.clone(),
                a.account.clone(),
                a.app_key.clone(),
                ms_to_utc(a.created_at_ms),
            ]);
        }
        t
    };
    let app_json = |a: &pb::App| json!({"name": a.name, "account": a.account, "app_key": a.app_key, "created_at_ms": a.created_at_ms});
    match cmd {
        AppCmd::Create { name, account } => {
            let r = c
                .create_app(pb::CreateAppRequest { name, account })
                .await?
                .into_inner();
            let a = r.app.unwrap_or_default();
            let mut v = app_json(&a);
            v["app_secret"] = json!(r.app_secret);
            print(f, v, || {
                let mut t = table(std::slice::from_ref(&a));
                t.row(vec![format!("AppSecret (shown once): {}", r.app_secret)]);
                t
            });
        }
        AppCmd::List => {
            let list = c
                .describe_apps(pb::DescribeAppsRequest::default())
                .await?
                .into_inner()
                .apps;
            print(
                f,
                json!(list.iter().map(app_json).collect::<Vec<_>>()),
                || table(&list),
            );
        }
        AppCmd::Delete { name } => {
            let r = c.delete_app(pb::DeleteAppRequest { name }).await?;
            print_deleted(f, r.into_inner());
        }
    }
    Ok(())
}

async fn tokens(c: &mut Client, f: Format, cmd: TokenCmd) -> Result<()> {
    let row = |t: &pb::Token| vec![t.id.clone(), t.account.clone(), ms_to_utc(t.created_at_ms)];
    match cmd {
        TokenCmd::Create { account } => {
            let r = c
                .create_token(pb::CreateTokenRequest { account })
                .await?
                .into_inner();
            let t = r.token.unwrap_or_default();
            let v = json!({"id": t.id, "account": t.account, "token": r.secret_token});
            print(f, v, || {
                let mut table =
                    Table::new(&["ID", "ACCOUNT", "CREATED (UTC)", "TOKEN (shown once)"]);
                let mut cells = row(&t);
                cells.push(r.secret_token.clone());
                table.row(cells);
                table
            });
        }
        TokenCmd::List { account } => {
            let list = c
                .describe_tokens(pb::DescribeTokensRequest { account })
                .await?
                .into_inner()
                .tokens;
            let v = json!(list
                .iter()
                .map(|t| json!({"id": t.id, "account": t.account, "created_at_ms": t.created_at_ms}))
                .collect::<Vec<_>>());
            print(f, v, || {
                let mut table = Table::new(&["ID", "ACCOUNT", "CREATED (UTC)"]);
                for t in &list {
                    table.row(row(t));
                }
                table
            });
        }
        TokenCmd::Revoke { id } => {
            let r = c.revoke_token(pb::RevokeTokenRequest { id }).await?;
            print_deleted(f, r.into_inner());
        }
    }
    Ok(())
}

async fn cluster(c: &mut Client, f: Format, cmd: ClusterCmd) -> Result<()> {
    let is_status = matches!(cmd, ClusterCmd::Status);
    let status = match cmd {
        ClusterCmd::Status => c.describe_cluster(pb::DescribeClusterRequest {}).await?,
        ClusterCmd::AddLearner { node_id, peer_addr } => {
            c.add_learner(pb::AddLearnerRequest { node_id, peer_addr })
                .await?
        }
        ClusterCmd::Promote { node_id } => {
            c.promote_learner(pb::PromoteLearnerRequest { node_id })
                .await?
        }
        ClusterCmd::Remove { node_id } => c.remove_node(pb::RemoveNodeRequest { node_id }).await?,
    }
    .into_inner();
    match f {
        Format::Json | Format::Csv | Format::Yaml => {
            print(f, output::cluster_json(&status), || Table::new(&[]))
        }
        Format::Table => {
            println!(
                "node {} ({})  leader: {}  term: {}  last log: {}  applied: {}\n",
                status.node_id,
                status.state,
                output::opt(status.leader_id),
                status.term,
                output::opt(status.last_log_index),
                output::opt(status.applied_index),
            );
            if !status.cluster_id.is_empty() {
                println!("cluster: {}", status.cluster_id);
            }
            if let Some(w) = &status.waiting {
                println!("waiting for: {w}");
            }
            if let Some(why) = &status.not_serving {
                println!("not serving API traffic: {why}");
            }
            print!("{}", output::cluster_table(&status).render());
        }
    }
    if is_status {
        status_problem(&status)?;
    }
    Ok(())
}

/// What makes a status unhealthy, for `cluster status`'s exit code: no leader known (the
/// cluster cannot accept writes through this node), a leader out of touch with a quorum, or
/// the node does not serve API traffic.
fn status_problem(s: &pb::ClusterStatus) -> Result<()> {
    if let Some(why) = &s.not_serving {
        bail!("node {} does not serve API traffic: {why}", s.node_id);
    }
    if let (Some(leader), Some(w)) = (s.leader_id, &s.waiting) {
        bail!(
            "node {} knows node {leader} as leader but is waiting for {w}: the cluster may not accept writes",
            s.node_id
        );
    }
    if s.leader_id.is_none() {
        let waiting = s
            .waiting
            .as_deref()
            .map(|w| format!(": it is waiting for {w}"))
            .unwrap_or_else(|| {
                format!(
                    ": it is a {} in term {} and has not heard from a leader",
                    s.state, s.term
                )
            });
        bail!(
            "no leader is known to node {}, so the cluster cannot accept writes through it{waiting}",
            s.node_id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn negative_amounts_are_values_where_they_are_valid() {
        let cli = Cli::try_parse_from([
            "gatewayctl",
            "account",
            "adjust",
            "--name",
            "a",
            "--amount",
            "-5",
            "--reason",
            "r",
        ])
        .expect("a debit parses");
        match cli.command {
            Cmd::Account(money::AccountCmd::Adjust { amount, .. }) => assert_eq!(amount, "-5"),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "gatewayctl",
            "account",
            "set-alert",
            "--name",
            "a",
            "--threshold",
            "-1",
        ])
        .expect("parses; the server judges the value");
        assert!(matches!(cli.command, Cmd::Account(_)));
    }

    #[test]
    fn errors_of_servers_that_are_not_the_admin_api_are_explained() {
        let data_plane = tonic::Status::internal(
            "protocol error: received message with invalid compression flag: 123 (valid flags \
             are 0 and 1) while receiving response with status: 404 Not Found",
        );
        let e = explain_status(&data_plane, "http://127.0.0.1:8080").unwrap();
        assert!(
            e.contains("http://127.0.0.1:8080") && e.contains("data-plane port"),
            "{e}"
        );
        let peer = tonic::Status::unimplemented("");
        let e = explain_status(&peer, "http://127.0.0.1:9091").unwrap();
        assert!(e.contains("peer port"), "{e}");
        assert!(explain_status(&tonic::Status::not_found("no group g"), "x").is_none());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(ms_to_utc(1_709_210_096_007), "2024-02-29T12:34:56Z");
        let mut v = json!({"created_at_ms": 1_709_210_096_007u64, "timeout_ms": 5000,
            "items": [{"at_ms": 0}, {"term_end_ms": null}]});
        use serde_json::Value;
        output::with_times(&mut v);
        assert_eq!(v["created_at"], "2024-02-29T12:34:56Z");
        assert_eq!(v["created_at_ms"], 1_709_210_096_007u64, "kept for scripts");
        assert!(v.get("timeout").is_none(), "durations are not times");
        assert_eq!(v["items"][0]["at"], Value::Null);
        assert_eq!(v["items"][1]["term_end"], Value::Null);
    }
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("fast").is_err());
        // The one parser (the load generator's) refuses what would overflow.
        assert!(parse_duration("99999999999999999999m").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // The forms scripts rely on parse (clap only finds some clashes at parse time).
        let forms: &[&[&str]] = &[
            &[
                "instance",
                "create",
                "--name",
                "n",
                "--spec",
                "s",
                "--region",
                "r",
                "--charge-type",
                "month",
            ],
            &["instance", "modify-spec", "--name", "n", "--spec", "s"],
            &["cluster", "status", "-o", "json"],
            &["export", "-o", "yaml", "--account", "a"],
            &["diff", "-f", "c.yaml"],
            &["apply", "-f", "c.yaml", "--prune", "--force", "--dry-run"],
            &[
                "import",
                "openapi",
                "p.yaml",
                "--group",
                "g",
                "--backend",
                "http://h:1",
            ],
            &[
                "group",
                "create",
                "--name",
                "g",
                "--instance",
                "i",
                "--host",
                "h",
                "--base-path",
                "/p",
            ],
            &["group", "modify", "--name", "g", "--instance", "shared"],
            &[
                "api",
                "create",
                "--group",
                "g",
                "--name",
                "n",
                "--method",
                "GET",
                "--path",
                "/p/{id}",
                "--backend",
                "http://h:1",
                "--timeout",
                "5s",
            ],
            &[
                "api", "deploy", "--group", "g", "--name", "n", "--stage", "PRE",
            ],
            &["api", "abolish", "--group", "g", "--name", "n"],
            &[
                "account",
                "create",
                "--name",
                "a",
                "--webhook",
                "http://h:1/x",
                "--alert-threshold",
                "5",
            ],
            &["account", "recharge", "--name", "a", "--amount", "10.5"],
            &["account", "set-alert", "--name", "a", "--threshold", "3"],
            &["account", "set-alert", "--name", "a", "--webhook", ""],
            &[
                "account", "adjust", "--name", "a", "--amount", "-2.50", "--reason", "refund",
            ],
            &[
                "instance",
                "create",
                "--name",
                "n",
                "--spec",
                "s",
                "--region",
                "r",
                "--charge-type",
                "year",
                "--auto-renew",
            ],
            &["instance", "renew", "--name", "n", "--months", "3"],
            &["instance", "renew", "--name", "n", "--years", "1"],
            &[
                "instance",
                "set-auto-renew",
                "--name",
                "n",
                "--auto-renew",
                "false",
            ],
            &[
                "bill",
                "statement",
                "--account",
                "a",
                "--month",
                "2026-01",
                "-o",
                "csv",
            ],
            &["account", "ledger", "--name", "a", "-o", "csv"],
            &["usage", "--account", "a", "--day", "2026-01-02"],
            &["bill", "list", "--account", "a"],
            &[
                "bill",
                "list",
                "--account",
                "a",
                "--after",
                "2026-01-02",
                "--limit",
                "10",
            ],
            &["bill", "get", "--account", "a", "--day", "2026-01-02"],
            &["events", "--account", "a"],
            &["events", "--after", "7", "--limit", "50", "-o", "json"],
            &["account", "get", "--name", "a"],
            &["account", "ledger", "--name", "a"],
            &[
                "account",
                "ledger",
                "--name",
                "a",
                "--after-seq",
                "20",
                "--limit",
                "5",
            ],
            &["account", "ledger", "--name", "a", "--after", "20"],
            &["usage", "--after", "a/2026-01-02", "--limit", "500"],
            &["app", "create", "--name", "mobile"],
            &[
                "api",
                "authorize",
                "--group",
                "g",
                "--name",
                "n",
                "--app",
                "mobile",
            ],
            &[
                "group",
                "set-acl",
                "--name",
                "g",
                "--allow",
                "198.18.0.0/15,2001:db8::/32",
                "--deny",
                "198.18.0.7",
            ],
            &[
                "api",
                "create",
                "--group",
                "g",
                "--name",
                "n",
                "--method",
                "GET",
                "--path",
                "/p",
                "--backend",
                "http://h:1",
                "--auth-type",
                "APP",
            ],
            &[
                "call",
                "--url",
                "http://127.0.0.1:8080/p?x=1",
                "--app-key",
                "k",
                "--app-secret-file",
                "/tmp/s",
                "--header",
                "Accept: */*",
            ],
            &["token", "create", "--account", "a"],
            &[
                "pricing",
                "estimate",
                "--region",
                "cn-hongkong",
                "--calls",
                "12000000",
                "--traffic-gb",
                "100",
                "-o",
                "json",
            ],
            &[
                "pricing",
                "estimate",
                "--region",
                "ap-southeast-1",
                "--spec",
                "api.s1.small",
                "--hours",
                "9.5",
            ],
            &[
                "loadtest",
                "--target",
                "http://127.0.0.1:8080/x@80",
                "--spec",
                "api.s1.small",
                "--modify-spec-at",
                "20s",
                "--to",
                "api.s1.medium",
                "--instance",
                "i",
            ],
        ];
        for form in forms {
            let args = std::iter::once("gatewayctl").chain(form.iter().copied());
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{form:?}: {e}"));
            let _ = format!("{cli:?}");
        }
        // And these must not: a renewal names one term, set-alert something to set.
        let refused: &[&[&str]] = &[
            &["instance", "renew", "--name", "n"],
            &[
                "instance", "renew", "--name", "n", "--months", "1", "--years", "1",
            ],
            &["account", "set-alert", "--name", "a"],
        ];
        for form in refused {
            let args = std::iter::once("gatewayctl").chain(form.iter().copied());
            assert!(Cli::try_parse_from(args).is_err(), "{form:?}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let rows = [
            json!({"a": "x", "b": 1, "c": null}),
            json!({"a": "he said \"hi\", then left", "b": 2, "c": "l1\nl2"}),
        ];
        assert_eq!(
            output::csv(&rows),
            "a,b,c\nx,1,\n\"he said \"\"hi\"\", then left\",2,\"l1\nl2\"\n"
        );
        assert_eq!(output::csv(&[]), "");
    }

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["wide-cell".into(), "x".into()]);
        assert_eq!(t.render(), "A          LONGER\nwide-cell  x\n");
    }
}
