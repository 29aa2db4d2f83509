//! The QMP wire protocol (QEMU's docs/interop/qmp-spec.rst), without sockets or a VM: the
//! framing of a byte stream into JSON messages, the greeting, capabilities negotiation, the
//! shape of commands, replies, errors and events.
//!
//! Everything here comes from an untrusted client: a message that is not JSON, or that grows
//! past [`MAX_MESSAGE`] bytes without ending, is a [`FrameError`] and the server closes that
//! client; a well-formed message that is not a valid command gets an error reply.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

/// The longest message a client may send (QEMU bounds its JSON tokens too); a longer one
/// closes the connection.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Why a client's byte stream cannot be read further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("JSON parse error, {0}")]
    Malformed(String),
    #[error("Message longer than {MAX_MESSAGE} bytes")]
    Oversized,
}

/// Splits a client's byte stream into JSON values. Values may arrive in pieces, several at
/// once, with or without newlines between them.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    /// Adds `bytes` and returns the complete values they finish.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, FrameError> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut stream = serde_json::Deserializer::from_slice(&self.buf).into_iter::<Value>();
            loop {
                match stream.next() {
                    Some(Ok(v)) => {
                        out.push(v);
                        consumed = stream.byte_offset();
                    }
                    // The rest is an unfinished value: wait for more bytes.
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(FrameError::Malformed(e.to_string())),
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_MESSAGE {
            return Err(FrameError::Oversized);
        }
        Ok(out)
    }
}

/// QEMU's error classes (qapi/error.json, ErrorClass) that minivmm uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    GenericError,
    CommandNotFound,
}

impl ErrorClass {
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::GenericError => "GenericError",
            ErrorClass::CommandNotFound => "CommandNotFound",
        }
    }
}

/// A failed command: its class and a one-line description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandError {
    pub class: ErrorClass,
    pub desc: String,
}

impl CommandError {
    pub fn generic(desc: impl Into<String>) -> Self {
        CommandError {
            class: ErrorClass::GenericError,
            desc: desc.into(),
        }
    }

    pub fn not_found(name: &str) -> Self {
        CommandError {
            class: ErrorClass::CommandNotFound,
            desc: format!("The command {name} has not been found"),
        }
    }
}

/// The server's greeting (qmp-spec 2.2): version and capabilities (none: no out-of-band).
pub fn greeting(major: u64, minor: u64, micro: u64, package: &str) -> Value {
    json!({
        "QMP": {
            "version": {
                "qemu": { "major": major, "minor": minor, "micro": micro },
                "package": package,
            },
            "capabilities": [],
        }
    })
}

/// A successful reply (qmp-spec 2.4.1), with the command's id if it had one.
pub fn success(id: Option<Value>, ret: Value) -> Value {
    let mut m = Map::new();
    m.insert("return".into(), ret);
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// An error reply (qmp-spec 2.4.2).
pub fn error(id: Option<Value>, e: &CommandError) -> Value {
    let mut m = Map::new();
    m.insert(
        "error".into(),
        json!({ "class": e.class.name(), "desc": e.desc }),
    );
    if let Some(id) = id {
        m.insert("id".into(), id);
    }
    Value::Object(m)
}

/// An asynchronous event (qmp-spec 2.5): its name, its data when it has any, and when it
/// happened.
pub fn event(name: &str, data: Option<Value>, at: SystemTime) -> Value {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut m = Map::new();
    m.insert("event".into(), Value::String(name.into()));
    if let Some(d) = data {
        m.insert("data".into(), d);
    }
    m.insert(
        "timestamp".into(),
        json!({ "seconds": since.as_secs(), "microseconds": since.subsec_micros() }),
    );
    Value::Object(m)
}

/// A command the session leaves to the VM.
#[derive(Clone, Debug, PartialEq)]
pub struct Command {
    pub id: Option<Value>,
    pub name: String,
    pub args: Map<String, Value>,
}

/// What to do with one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Answer with this, nothing else to do.
    Reply(Value),
    /// Run the command and answer with its result.
    Run(Command),
}

/// One client's protocol state: capabilities negotiation first, then commands.
#[derive(Debug, Default)]
pub struct Session {
    negotiated: bool,
}

impl Session {
    /// Whether events go to this client (only after negotiation, qmp-spec 2.2).
    pub fn wants_events(&self) -> bool {
        self.negotiated
    }

    /// Takes one message from the client.
    pub fn handle(&mut self, msg: Value) -> Step {
        let Value::Object(mut m) = msg else {
            return Step::Reply(error(
                None,
                &CommandError::generic("QMP input must be a JSON object"),
            ));
        };
        let id = m.remove("id");
        let fail = |desc: String| Step::Reply(error(id.clone(), &CommandError::generic(desc)));
        if m.contains_key("exec-oob") {
            return fail(
                "QMP input member 'exec-oob' is not supported: no out-of-band capability".into(),
            );
        }
        let name = match m.remove("execute") {
            Some(Value::String(n)) => n,
            Some(_) => return fail("QMP input member 'execute' must be a string".into()),
            None => return fail("QMP input lacks member 'execute'".into()),
        };
        let args = match m.remove("arguments") {
            None => Map::new(),
            Some(Value::Object(a)) => a,
            Some(_) => return fail("QMP input member 'arguments' must be an object".into()),
        };
        if let Some(extra) = m.keys().next() {
            return fail(format!("QMP input member '{extra}' is unexpected"));
        }
        if name == "qmp_capabilities" {
            return Step::Reply(self.negotiate(id, &args));
        }
        if !self.negotiated {
            return Step::Reply(error(
                id,
                &CommandError {
                    class: ErrorClass::CommandNotFound,
                    desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
                },
            ));
        }
        Step::Run(Command { id, name, args })
    }

    fn negotiate(&mut self, id: Option<Value>, args: &Map<String, Value>) -> Value {
        if self.negotiated {
            return error(
                id,
                &CommandError {
                    class: ErrorClass::CommandNotFound,
                    desc: "Capabilities negotiation is already complete, command ignored".into(),
                },
            );
        }
        for (k, v) in args {
            if k != "enable" {
                return error(
                    id,
                    &CommandError::generic(format!("Parameter '{k}' is unexpected")),
                );
            }
            let Value::Array(caps) = v else {
                return error(
                    id,
                    &CommandError::generic("Parameter 'enable' expects an array"),
                );
            };
            if let Some(c) = caps.first() {
                let c = c.as_str().unwrap_or("?");
                return error(
                    id,
                    &CommandError::generic(format!("Capability '{c}' not available")),
                );
            }
        }
        self.negotiated = true;
        success(id, json!({}))
    }
}

/// The bytes of one message on the wire: compact JSON and a CRLF, as QEMU ends its lines.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.extend_from_slice(b"\r\n");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_split_value_completes_on_second_push() {
        let mut f = Framer::default();
        assert!(f.push(br#"{"execute": "qu"#).unwrap().is_empty());
        let v = f.push(br#"ery-status"}"#).unwrap();
        assert_eq!(v, vec![json!({"execute": "query-status"})]);
    }

    #[test]
    fn framer_several_values_in_one_push_without_newlines() {
        let mut f = Framer::default();
        let v = f.push(br#"{"a":1}{"b":2}  {"c":"#).unwrap();
        assert_eq!(v, vec![json!({"a":1}), json!({"b":2})]);
        assert_eq!(f.push(b"3}\n").unwrap(), vec![json!({"c":3})]);
    }

    #[test]
    fn framer_malformed_json_is_an_error() {
        let mut f = Framer::default();
        assert!(matches!(
            f.push(b"{\"execute\": ]"),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn framer_unfinished_message_past_limit_is_oversized() {
        let mut f = Framer::default();
        let mut big = b"{\"execute\": \"".to_vec();
        big.resize(MAX_MESSAGE + 1, b'a');
        assert_eq!(f.push(&big), Err(FrameError::Oversized));
    }

    #[test]
    fn framer_deep_nesting_is_an_error_not_a_crash() {
        let mut f = Framer::default();
        let deep = "[".repeat(10_000);
        assert!(matches!(
            f.push(deep.as_bytes()),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn greeting_has_version_and_no_capabilities() {
        let g = greeting(0, 1, 0, "minivmm");
        assert_eq!(g["QMP"]["version"]["qemu"]["minor"], 1);
        assert_eq!(g["QMP"]["version"]["package"], "minivmm");
        assert_eq!(g["QMP"]["capabilities"], json!([]));
    }

    #[test]
    fn session_command_before_negotiation_is_command_not_found() {
        let mut s = Session::default();
        let Step::Reply(r) = s.handle(json!({"execute": "query-status", "id": 7})) else {
            panic!("ran before negotiation")
        };
        assert_eq!(r["error"]["class"], "CommandNotFound");
        assert_eq!(r["id"], 7);
        assert!(!s.wants_events());
    }

    #[test]
    fn session_negotiation_then_commands_run_and_second_negotiation_fails() {
        let mut s = Session::default();
        assert_eq!(
            s.handle(json!({"execute": "qmp_capabilities", "id": "a"})),
            Step::Reply(json!({"return": {}, "id": "a"}))
        );
        assert!(s.wants_events());
        assert_eq!(
            s.handle(json!({"execute": "stop", "arguments": {"x": 1}})),
            Step::Run(Command {
                id: None,
                name: "stop".into(),
                args: json!({"x": 1}).as_object().unwrap().clone(),
            })
        );
        let Step::Reply(r) = s.handle(json!({"execute": "qmp_capabilities"})) else {
            panic!()
        };
        assert_eq!(r["error"]["class"], "CommandNotFound");
    }

    #[test]
    fn session_negotiation_with_unknown_capability_fails_and_stays_unnegotiated() {
        let mut s = Session::default();
        let Step::Reply(r) =
            s.handle(json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}))
        else {
            panic!()
        };
        assert_eq!(r["error"]["class"], "GenericError");
        assert!(r["error"]["desc"].as_str().unwrap().contains("oob"));
        assert!(!s.wants_events());
    }

    #[test]
    fn session_malformed_commands_get_generic_errors_with_id() {
        let mut s = Session::default();
        s.handle(json!({"execute": "qmp_capabilities"}));
        for (msg, needle) in [
            (json!([1, 2]), "must be a JSON object"),
            (json!({"id": 3}), "lacks member 'execute'"),
            (json!({"execute": 5, "id": 3}), "must be a string"),
            (
                json!({"execute": "stop", "arguments": [], "id": 3}),
                "'arguments' must be an object",
            ),
            (
                json!({"execute": "stop", "foo": 1, "id": 3}),
                "'foo' is unexpected",
            ),
            (json!({"exec-oob": "stop", "id": 3}), "exec-oob"),
        ] {
            let Step::Reply(r) = s.handle(msg.clone()) else {
                panic!("{msg} ran")
            };
            assert_eq!(r["error"]["class"], "GenericError", "{msg}");
            assert!(
                r["error"]["desc"].as_str().unwrap().contains(needle),
                "{msg}: {r}"
            );
            if msg.is_object() {
                assert_eq!(r["id"], 3, "{msg}");
            }
        }
    }

    #[test]
    fn event_has_timestamp_and_data_only_when_given() {
        let at = UNIX_EPOCH + std::time::Duration::from_micros(1_500_000_250);
        let e = event("STOP", None, at);
        assert_eq!(
            e,
            json!({"event": "STOP", "timestamp": {"seconds": 1500, "microseconds": 250}})
        );
        let e = event("SHUTDOWN", Some(json!({"guest": true})), at);
        assert_eq!(e["data"]["guest"], true);
    }

    #[test]
    fn encode_is_one_line_ending_in_crlf() {
        let b = encode(&json!({"return": {"a": "x\ny"}}));
        assert!(b.ends_with(b"\r\n"));
        assert_eq!(b.iter().filter(|c| **c == b'\n').count(), 1);
    }
}
