//! The storage backend the integration tests run on: sled (the default) or, with
//! `FACEVAULT_TEST_BACKEND=postgres`, PostgreSQL, where every [`TestDatabase`] (one per
//! `TestServer`) is a fresh database on the server of `FACEVAULT_TEST_POSTGRES_URL` (an admin URL;
//! when unset, `scripts/test-postgres.sh` gives one), dropped again when the server is done
//! with it. A PostgreSQL that cannot be reached fails the test; nothing is skipped.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::NoTls;

/// Prefix of every database the tests create: `fvtest_<pid>_<counter>_<random>`.
pub(crate) const PREFIX: &str = "fvtest_";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sled,
    Postgres,
}

/// The backend of this run (`FACEVAULT_TEST_BACKEND`: unset or `sled`, or `postgres`), printed
/// once to stderr.
pub(crate) fn backend() -> Backend {
    static BACKEND: OnceLock<Backend> = OnceLock::new();
    *BACKEND.get_or_init(|| {
        let value = std::env::var_os("FACEVAULT_TEST_BACKEND").unwrap_or_default();
        let backend = match value.to_str() {
            Some("" | "sled") => Backend::Sled,
            Some("postgres") => Backend::Postgres,
            _ => panic!("FACEVAULT_TEST_BACKEND={value:?}: expected sled or postgres"),
        };
        announce(&format!("storage backend {backend:?}"));
        backend
    })
}

/// A line on the process's stderr, past the test harness's output capture.
fn announce(line: &str) {
    let _ = writeln!(std::io::stderr(), "facevault tests: {line}");
}

/// The admin URL, found once per process (running the script off the async threads), after
/// which databases that dead test processes left behind are dropped.
async fn admin_url() -> &'static str {
    static ADMIN: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    ADMIN
        .get_or_init(|| async {
            let url = match std::env::var("FACEVAULT_TEST_POSTGRES_URL") {
                Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
                _ => tokio::task::spawn_blocking(run_script).await.expect("scripts/test-postgres.sh"),
            };
            announce(&format!("PostgreSQL admin URL {}", redacted(&url)));
            sweep(&url).await;
            url
        })
        .await
}

fn run_script() -> String {
    let script = super::root().join("scripts/test-postgres.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("FACEVAULT_TEST_BACKEND=postgres: cannot run {}: {e}", script.display()));
    let url = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success() && !url.is_empty(),
        "FACEVAULT_TEST_BACKEND=postgres and FACEVAULT_TEST_POSTGRES_URL is unset, and {} found no \
         PostgreSQL server ({}; its stderr is above)",
        script.display(),
        output.status
    );
    url
}

/// The URL with its password, if any, replaced.
fn redacted(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let Some(at) = url[start..].find('@').map(|i| start + i) else { return url.to_owned() };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

/// `admin` with its database replaced by `name` (a URL, or a key=value string).
fn with_database(admin: &str, name: &str) -> String {
    let Some(start) = admin.find("://").map(|i| i + 3) else { return format!("{admin} dbname={name}") };
    let (base, query) = match admin[start..].find('?') {
        Some(q) => admin.split_at(start + q),
        None => (admin, ""),
    };
    let base = match base[start..].find('/') {
        Some(slash) => &base[..start + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    Ok(client)
}

async fn drop_database(admin: &str, name: &str) -> Result<(), String> {
    let client = connect(admin).await?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.map_err(|e| e.to_string())
}

/// Drops the databases of test processes that no longer run (killed, or timed out before their
/// servers were dropped). Only for a server on this machine, where their pids mean something.
async fn sweep(admin: &str) {
    let local = ["@127.0.0.1", "@localhost", "@[::1]", "host=127.0.0.1", "host=localhost"];
    if !local.iter().any(|host| admin.contains(host)) {
        return;
    }
    let client = connect(admin).await.unwrap_or_else(|e| {
        panic!("FACEVAULT_TEST_BACKEND=postgres: PostgreSQL at {} does not answer: {e}", redacted(admin))
    });
    let rows = client
        .query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)", &[&PREFIX])
        .await
        .unwrap_or_else(|e| panic!("list the test databases: {e}"));
    for row in rows {
        let name: String = row.get(0);
        let pid = name[PREFIX.len()..].split('_').next().and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            match drop_database(admin, &name).await {
                Ok(()) => announce(&format!("dropped {name}, left behind by a test process that is gone")),
                Err(e) => announce(&format!("could not drop the stale database {name}: {e}")),
            }
        }
    }
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(counter);
    format!("{PREFIX}{}_{counter}_{:08x}", std::process::id(), hasher.finish() as u32)
}

/// A fresh PostgreSQL database, dropped (`WITH (FORCE)`) with this value: by a task of the
/// current runtime when there is one, else (or when that runtime shuts down first) on a thread
/// of its own, so no async thread ever blocks on it.
pub(crate) struct TestDatabase {
    url: String,
    doomed: Option<Doomed>,
}

impl TestDatabase {
    /// A database when the backend is PostgreSQL, else `None`.
    pub(crate) async fn for_backend() -> Option<Self> {
        match backend() {
            Backend::Sled => None,
            Backend::Postgres => Some(Self::create().await),
        }
    }

    /// Creates a database; panics when PostgreSQL cannot be reached or refuses.
    pub(crate) async fn create() -> Self {
        Self::create_on(admin_url().await).await
    }

    /// Creates a database on the server of the admin URL `admin`.
    pub(crate) async fn create_on(admin: &'static str) -> Self {
        let name = unique_name();
        let client = connect(admin).await.unwrap_or_else(|e| {
            panic!("FACEVAULT_TEST_BACKEND=postgres: PostgreSQL at {} does not answer: {e}", redacted(admin))
        });
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} on {}: {e}", redacted(admin)));
        TestDatabase { url: with_database(admin, &name), doomed: Some(Doomed { admin, name, done: false }) }
    }

    /// The URL of this database (for `Config::postgres_url`).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Drops the database now.
    pub(crate) async fn drop_now(mut self) {
        if let Some(doomed) = self.doomed.take() {
            doomed.drop_async().await;
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(doomed) = self.doomed.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(doomed.drop_async())),
                Err(_) => drop(doomed),
            }
        }
    }
}

/// A database still to drop. Dropped itself, it drops the database on a thread of its own with
/// its own runtime (and joins it): the path when no runtime runs, or when the runtime that was
/// to drop it shut down first (the end of a #[tokio::test] drops its unfinished tasks).
struct Doomed {
    admin: &'static str,
    name: String,
    done: bool,
}

impl Doomed {
    async fn drop_async(mut self) {
        let result = drop_database(self.admin, &self.name).await;
        self.done = true;
        if let Err(e) = result {
            announce(&format!("could not drop the test database {}: {e}", self.name));
        }
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (admin, name) = (self.admin, std::mem::take(&mut self.name));
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
            runtime.block_on(drop_database(admin, &name)).map_err(|e| format!("{name}: {e}"))
        });
        match thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => announce(&format!("could not drop the test database {e}")),
            Err(_) => announce("the thread dropping a test database panicked"),
        }
    }
}

#[test]
fn urls() {
    assert_eq!(with_database("postgres://u@127.0.0.1:5432/test", "x"), "postgres://u@127.0.0.1:5432/x");
    assert_eq!(with_database("postgres://u:p@h/test?sslmode=disable", "x"), "postgres://u:p@h/x?sslmode=disable");
    assert_eq!(with_database("postgresql://h:1", "x"), "postgresql://h:1/x");
    assert_eq!(with_database("host=h user=u", "x"), "host=h user=u dbname=x");
    assert_eq!(redacted("postgres://u:secret@h/db"), "postgres://u:***@h/db");
    assert_eq!(redacted("postgres://u@h/db"), "postgres://u@h/db");
    assert!(unique_name().starts_with(&format!("{PREFIX}{}_", std::process::id())));
}
