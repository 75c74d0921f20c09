//! A connection to a broker, under a deadline, its failures said plainly.

use std::time::Duration;

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties, ErrorKind};
use strom_proto::manifest::rabbitmq::AmqpEndpoint;

/// How long a connection attempt may take (TCP, TLS and the AMQP handshake).
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Why a broker could not be used. Never holds a password: brokers are named
/// by `host:port` or their redacted URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("connection refused to {0}")]
    Refused(String),
    #[error("no answer from {addr} within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error("{addr} refused the connection: {reason}")]
    Rejected { addr: String, reason: String },
    #[error("{0}")]
    Other(String),
}

/// The URI lapin connects to. Built from the parts, not parsed again: lapin's
/// own parser takes an IP address for `localhost`.
pub fn amqp_uri(e: &AmqpEndpoint) -> AMQPUri {
    AMQPUri {
        scheme: if e.tls {
            AMQPScheme::AMQPS
        } else {
            AMQPScheme::AMQP
        },
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo {
                username: e.user.clone(),
                password: e.password().to_string(),
            },
            host: e
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: e.port,
        },
        vhost: e.vhost.clone(),
        query: AMQPQueryString {
            frame_max: e.frame_max,
            channel_max: e.channel_max,
            heartbeat: e.heartbeat_s,
            connection_timeout: e.connection_timeout_ms,
            auth_mechanism: None,
        },
    }
}

/// Says what went wrong with `endpoint` in words an operator can act on.
pub fn describe(endpoint: &AmqpEndpoint, error: &lapin::Error) -> BrokerError {
    let addr = endpoint.address();
    match error.kind() {
        ErrorKind::IOError(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            BrokerError::Refused(addr)
        }
        ErrorKind::IOError(io) => BrokerError::Other(format!("{addr}: {io}")),
        ErrorKind::ProtocolError(amqp) => BrokerError::Rejected {
            addr,
            reason: amqp.get_message().as_str().to_string(),
        },
        _ => BrokerError::Other(format!("{endpoint}: {error}")),
    }
}

/// Connects to `endpoint` within [`CONNECT_DEADLINE`], trusting `ca_pem` (PEM
/// certificates) besides the system's roots for `amqps://`.
pub async fn connect(
    endpoint: &AmqpEndpoint,
    ca_pem: Option<&str>,
) -> Result<Connection, BrokerError> {
    let uri = amqp_uri(endpoint);
    let props = ConnectionProperties::default();
    let attempt = async {
        match ca_pem {
            Some(pem) if endpoint.tls => {
                let runtime = lapin::runtime::default_runtime()?;
                let tls = lapin::tcp::OwnedTLSConfig {
                    identity: None,
                    cert_chain: Some(pem.to_string()),
                };
                Connection::connect_uri_with_config(uri, props, tls, runtime).await
            }
            _ => Connection::connect_uri(uri, props).await,
        }
    };
    match tokio::time::timeout(CONNECT_DEADLINE, attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(describe(endpoint, &e)),
        Err(_) => Err(BrokerError::Timeout {
            addr: endpoint.address(),
            secs: CONNECT_DEADLINE.as_secs(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strom_proto::manifest::rabbitmq::parse_amqp_uri;

    #[test]
    fn the_uri_keeps_an_ip_host_and_the_credentials() {
        let e = parse_amqp_uri("amqp://u:p%40ss@192.0.2.7:5673/v?heartbeat=5").unwrap();
        let uri = amqp_uri(&e);
        assert_eq!(uri.authority.host, "192.0.2.7");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.password, "p@ss");
        assert_eq!(uri.vhost, "v");
        assert_eq!(uri.query.heartbeat, Some(5));
    }

    #[tokio::test]
    async fn a_closed_port_is_named_without_the_password() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = parse_amqp_uri(&format!("amqp://u:hunter2@127.0.0.1:{port}/")).unwrap();
        let err = connect(&e, None).await.unwrap_err();
        assert_eq!(err, BrokerError::Refused(format!("127.0.0.1:{port}")));
        assert_eq!(
            err.to_string(),
            format!("connection refused to 127.0.0.1:{port}")
        );
    }
}
