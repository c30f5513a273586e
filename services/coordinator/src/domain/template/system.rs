//! Seed 002's three team workflows as system templates, written as `POST /v1/templates`
//! bodies in `services/coordinator/templates/*.json`:
//!
//! - [`IMPLEMENT_A_FEATURE`]: four phases (analysis and design in parallel, the core
//!   implementation in order, integration and deployment in parallel, the production release
//!   in order), the production deploy guarded by a person's approval.
//! - [`CRITICAL_PRODUCTION_BUG`]: triage, investigation, solution, validation and deployment,
//!   each step time-boxed (5, 15, 30 and 15 minutes); after 60 minutes a person is needed, a
//!   security implication gives the lead to the security agent and a data corruption risk to
//!   the database agent.
//! - [`PERFORMANCE_OPTIMISATION`]: analysis in parallel, planning, implementation ordered by
//!   impact (high, medium, low), validation.
//!
//! Their roles are seed 002's agents: `security`, `database`, `frontend`, `api`, `testing`,
//! `devops`, `meta`.

use cadre_proto::model::WorkflowTemplate;
use cadre_proto::{TemplateId, TenantId};

use super::TemplateDraft;

pub const IMPLEMENT_A_FEATURE: &str = "implement-a-feature";
pub const CRITICAL_PRODUCTION_BUG: &str = "critical-production-bug-resolution";
pub const PERFORMANCE_OPTIMISATION: &str = "system-performance-optimisation";

/// Where a system template comes from.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// With the tenant, derives the template's id ([`TemplateId::system`]).
    pub slug: &'static str,
    /// Raise it with every change to `json`: a registered system template is replaced only by
    /// a higher revision, so without it running deployments keep the old definition.
    pub revision: u32,
    /// A `POST /v1/templates` body.
    pub json: &'static str,
}

pub const SOURCES: [Source; 3] = [
    Source {
        slug: IMPLEMENT_A_FEATURE,
        revision: 1,
        json: include_str!("../../../templates/implement-a-feature.json"),
    },
    Source {
        slug: CRITICAL_PRODUCTION_BUG,
        revision: 1,
        json: include_str!("../../../templates/critical-production-bug-resolution.json"),
    },
    Source {
        slug: PERFORMANCE_OPTIMISATION,
        revision: 1,
        json: include_str!("../../../templates/system-performance-optimisation.json"),
    },
];

/// The id of the system template `slug` (one of the constants above) in `tenant`.
pub fn id(tenant: &TenantId, slug: &str) -> TemplateId {
    TemplateId::system(tenant, slug)
}

/// Every system template of `tenant`, as the coordinator registers them. An error means a
/// source does not parse, which the tests of this module rule out.
pub fn templates(tenant: &TenantId) -> Result<Vec<WorkflowTemplate>, serde_json::Error> {
    SOURCES
        .iter()
        .map(|source| {
            let draft: TemplateDraft = serde_json::from_str(source.json)?;
            Ok(draft.into_template(id(tenant, source.slug), true, source.revision))
        })
        .collect()
}
