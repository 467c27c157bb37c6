//! A blocking client of the Envoy rate limit service (RLS v3 gRPC), built
//! from Envoy's protos as `envoy-types` ships them (tonic), for the RLS tests
//! and the benchmark; and raw calls (any bytes as the request message) for
//! hostile-input tests.

use std::time::Duration;

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
pub use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response::Code, RateLimitRequest, RateLimitResponse,
};
use envoy_types::pb::google::protobuf::UInt64Value;
use tonic::transport::Channel;

/// The gRPC path of `ShouldRateLimit`.
pub const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// A connection to one node's RLS listener with its own runtime.
pub struct RlsClient {
    rt: tokio::runtime::Runtime,
    client: RateLimitServiceClient<Channel>,
    channel: Channel,
}

impl RlsClient {
    /// Connects to `url` (`http://host:port`).
    pub fn connect(url: &str) -> RlsClient {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let channel = rt
            .block_on(
                Channel::from_shared(url.to_string())
                    .expect("a valid URL")
                    .timeout(Duration::from_secs(10))
                    .connect(),
            )
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        RlsClient {
            rt,
            client: RateLimitServiceClient::new(channel.clone()),
            channel,
        }
    }

    /// One `ShouldRateLimit` call.
    pub fn call(&mut self, req: RateLimitRequest) -> Result<RateLimitResponse, tonic::Status> {
        let client = &mut self.client;
        self.rt
            .block_on(client.should_rate_limit(req))
            .map(tonic::Response::into_inner)
    }

    /// `grpc.health.v1.Health/Check` of `service` ("" for the server): the
    /// serving status (1 = SERVING).
    pub fn health(&mut self, service: &str) -> Result<i32, tonic::Status> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let mut client = HealthClient::new(self.channel.clone());
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        self.rt
            .block_on(client.check(request))
            .map(|r| r.into_inner().status)
    }

    /// `ShouldRateLimit` with `body` as the encoded request message, as is.
    pub fn call_raw(&mut self, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        self.rt.block_on(async move {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(
                tonic::Request::new(body),
                tonic::codegen::http::uri::PathAndQuery::from_static(PATH),
                RawCodec,
            )
            .await
            .map(tonic::Response::into_inner)
        })
    }
}

/// A descriptor of `entries` (key, value).
pub fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        ..RateLimitDescriptor::default()
    }
}

/// `d` with its own `hits_addend` (0: check without charging).
pub fn with_hits(mut d: RateLimitDescriptor, hits: u64) -> RateLimitDescriptor {
    d.hits_addend = Some(UInt64Value { value: hits });
    d
}

/// `d` refunding its hits.
pub fn negative(mut d: RateLimitDescriptor) -> RateLimitDescriptor {
    d.is_negative_hits = true;
    d
}

/// `d` with a limit override of `n` per `unit` (proto value: 1 second ... 7 year).
pub fn with_override(mut d: RateLimitDescriptor, n: u32, unit: i32) -> RateLimitDescriptor {
    d.limit = Some(RateLimitOverride {
        requests_per_unit: n,
        unit,
    });
    d
}

/// A request of `domain` with `descriptors`.
pub fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_string(),
        descriptors,
        hits_addend: 0,
    }
}

/// Sends and receives message bodies as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}
