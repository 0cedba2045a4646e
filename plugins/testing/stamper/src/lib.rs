//! A message interceptor (message role) for the interceptor tests and benchmark. Every
//! publish it sees gets the user property `via = <config name>` (so the order of several
//! shows), and the payload cues the rest: `drop` drops it with 0x99, `trap` panics,
//! `upper` upper-cases the payload, `bad-topic` rewrites to an invalid topic; a topic
//! under `rename/` moves to `renamed/`. With `pass = true` it passes everything as is.

use apiary_plugin_sdk::message::{self, Interceptor, Publish, Source, Verdict};
use apiary_plugin_sdk::{export, parse_config, InitError, Plugin};

#[derive(serde::Deserialize)]
struct Config {
    name: String,
    #[serde(default)]
    pass: bool,
}

static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();

struct Stamper;

impl Plugin for Stamper {
    fn init(config: String) -> Result<(), InitError> {
        let c: Config = parse_config(&config)?;
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Interceptor for Stamper {
    fn intercept(_source: &Source, mut msg: Publish) -> Verdict {
        let c = CONFIG.get().expect("init ran");
        if c.pass {
            return Verdict::Pass;
        }
        match &msg.payload[..] {
            b"drop" => return message::drop(0x99, "the payload says drop"),
            b"trap" => panic!("the payload says trap"),
            b"upper" => msg.payload = b"UPPER".to_vec(),
            b"bad-topic" => msg.topic = "a/+".into(),
            _ => {}
        }
        if let Some(rest) = msg.topic.strip_prefix("rename/") {
            msg.topic = format!("renamed/{rest}");
        }
        msg.add_user_property("via", &c.name);
        Verdict::Rewrite(msg)
    }
}

export!(Stamper: message);
