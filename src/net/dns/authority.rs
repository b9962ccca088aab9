//! The glue between the cluster's zones and hickory's catalog: one
//! authoritative zone handler for any [`Answers`], so the cluster zone and the
//! reverse zones only say what they answer.

use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{LowerName, Record, RecordType, TSigResponseContext};
use hickory_server::server::{Request, RequestInfo};
use hickory_server::zone_handler::{AuthLookup, AxfrPolicy, LookupControlFlow, LookupError, LookupOptions, LookupRecords, ZoneHandler, ZoneType};

/// What a zone answers for a name and type: records, an error (NXDOMAIN,
/// name without such records), or `Skip` to let the next handler answer.
#[async_trait::async_trait]
pub trait Answers: Send + Sync + 'static {
    async fn answer(&self, name: &LowerName, rtype: RecordType) -> LookupControlFlow<AuthLookup>;
}

/// A primary zone at `origin` answered by `answers`.
pub struct Authority<A> {
    origin: LowerName,
    answers: A,
}

impl<A: Answers> Authority<A> {
    pub fn new(origin: LowerName, answers: A) -> Self {
        Self { origin, answers }
    }
}

/// Records as a final lookup result.
pub fn found(answers: Vec<Record>, additionals: Vec<Record>) -> LookupControlFlow<AuthLookup> {
    let additionals = (!additionals.is_empty()).then_some(LookupRecords::Section(additionals));
    LookupControlFlow::Break(Ok(AuthLookup::answers(LookupRecords::Section(answers), additionals)))
}

/// A final negative result.
pub fn refused(error: LookupError) -> LookupControlFlow<AuthLookup> {
    LookupControlFlow::Break(Err(error))
}

#[async_trait::async_trait]
impl<A: Answers> ZoneHandler for Authority<A> {
    fn zone_type(&self) -> ZoneType {
        ZoneType::Primary
    }

    fn axfr_policy(&self) -> AxfrPolicy {
        AxfrPolicy::Deny
    }

    fn origin(&self) -> &LowerName {
        &self.origin
    }

    async fn lookup(&self, name: &LowerName, rtype: RecordType, _: Option<&RequestInfo<'_>>, _: LookupOptions) -> LookupControlFlow<AuthLookup> {
        self.answers.answer(name, rtype).await
    }

    async fn search(&self, request: &Request, _: LookupOptions) -> (LookupControlFlow<AuthLookup>, Option<TSigResponseContext>) {
        match request.request_info() {
            Ok(info) => (self.answers.answer(info.query.name(), info.query.query_type()).await, None),
            Err(e) => (refused(e), None),
        }
    }

    async fn nsec_records(&self, _: &LowerName, _: LookupOptions) -> LookupControlFlow<AuthLookup> {
        refused(LookupError::ResponseCode(ResponseCode::NotImp))
    }
}
