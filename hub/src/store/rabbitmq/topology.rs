//! Queue names and their declaration. Every name starts with the configured prefix; only the
//! default exchange is used (a queue's name is its routing key), so no exchange is declared.

use lapin::Channel;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

use super::work::LADDER_MS;

/// The names of one deployment (one prefix).
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn new(prefix: &str) -> Self {
        Names { prefix: prefix.to_owned() }
    }

    /// The event stream every node folds into its index.
    pub fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }

    /// The work queue of an endpoint: deliveries due now.
    pub fn work(&self, endpoint: &str) -> String {
        format!("{}.work.{endpoint}", self.prefix)
    }

    /// One rung of an endpoint's wait ladder: messages sit there for exactly `ms`, then are
    /// dead-lettered back to the work queue.
    pub fn wait(&self, endpoint: &str, ms: u64) -> String {
        format!("{}.wait.{endpoint}.{ms}ms", self.prefix)
    }

    /// The dead letters of an endpoint.
    pub fn dead(&self, endpoint: &str) -> String {
        format!("{}.dead.{endpoint}", self.prefix)
    }

    /// Every queue of these endpoints, stream first.
    pub fn all(&self, endpoints: &[String]) -> Vec<String> {
        let mut names = vec![self.events()];
        for e in endpoints {
            names.push(self.work(e));
            names.push(self.dead(e));
            names.extend(LADDER_MS.iter().map(|ms| self.wait(e, *ms)));
        }
        names
    }
}

pub fn short(name: &str) -> Result<ShortString, String> {
    ShortString::try_new(name).map_err(|_| format!("name `{name}` is longer than 255 bytes"))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// Declares the stream and every endpoint's queues. Idempotent: declaring a queue that exists
/// with the same arguments is a no-op (different arguments fail with PRECONDITION_FAILED,
/// which names the queue).
pub async fn declare(ch: &Channel, names: &Names, endpoints: &[String]) -> Result<(), SessionError> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let mut stream = FieldTable::default();
    stream.insert("x-queue-type".into(), text("stream"));
    let events = names.events();
    ch.queue_declare(short(&events)?, durable, stream).await.map_err(|e| declare_failed(&events, e))?;
    for endpoint in endpoints {
        let work = names.work(endpoint);
        ch.queue_declare(short(&work)?, durable, quorum()).await.map_err(|e| declare_failed(&work, e))?;
        let dead = names.dead(endpoint);
        ch.queue_declare(short(&dead)?, durable, quorum()).await.map_err(|e| declare_failed(&dead, e))?;
        for ms in LADDER_MS {
            let wait = names.wait(endpoint, ms);
            let mut args = quorum();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms as i64));
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(&work));
            // At-least-once dead-lettering (RabbitMQ >= 3.10): a message leaves the wait queue
            // only once the work queue has it. It requires `reject-publish` overflow.
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
            ch.queue_declare(short(&wait)?, durable, args).await.map_err(|e| declare_failed(&wait, e))?;
        }
    }
    Ok(())
}

/// Why a session could not be set up, and whether trying again can help.
#[derive(Debug)]
pub struct SessionError {
    pub message: String,
    /// Only an operator can resolve it (a queue of the prefix exists with other arguments):
    /// a first start gives up at once instead of retrying as if the broker were away.
    pub lasting: bool,
}

impl From<String> for SessionError {
    fn from(message: String) -> Self {
        SessionError { message, lasting: false }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A failed `queue.declare` of `name`. RabbitMQ answers 406 (`PRECONDITION_FAILED`) when the
/// queue exists with other arguments than these (a classic queue made by hand, another
/// program's, another Lotse version's): declaring again cannot change that.
fn declare_failed(name: &str, e: lapin::Error) -> SessionError {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406 => SessionError {
            message: format!(
                "queue `{name}` exists with other arguments than Lotse declares ({}): it was made by hand, by \
                 another program or by another Lotse version. Delete it (`rabbitmqctl delete_queue {name}`, once \
                 nothing in it is still wanted) or choose another `[queue] prefix`",
                amqp.get_message()
            ),
            lasting: true,
        },
        _ => SessionError { message: format!("declare `{name}`: {e}"), lasting: false },
    }
}

/// Deletes every queue of a prefix (tests and `docs/rabbitmq.md`'s clean-up).
pub async fn delete(ch: &Channel, names: &Names, endpoints: &[String]) -> Result<(), String> {
    for name in names.all(endpoints) {
        ch.queue_delete(short(&name)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| format!("delete `{name}`: {e}"))?;
    }
    Ok(())
}
