//! Registers seed 002's system templates ([`crate::domain::template::system`]) when the
//! coordinator starts. Their ids are derived, and each registration appends only if the
//! template's subject holds no registration of this revision or a later one, so restarts and
//! several replicas starting at once record each revision once.

use anyhow::Context as _;

use cadre_proto::{TenantId, subjects};
use cadre_runtime::bus::EventBus;

use crate::command::{Aggregate, History};
use crate::domain::template::{Command, Template, system};

pub async fn register(bus: &EventBus, tenant: &TenantId) -> anyhow::Result<()> {
    let templates = system::templates(tenant).context("reading the system templates")?;
    for template in templates {
        let filter = subjects::template(tenant, template.id, subjects::REGISTERED);
        let mut aggregate =
            Aggregate::<Template>::load(bus, tenant.clone(), filter, History::Last).await?;
        // A replica that registers it meanwhile makes this append conflict; deciding again on
        // what it stored then records nothing.
        let stored = aggregate
            .execute(bus, &Command::Register(Box::new(template.clone())))
            .await?;
        let current = aggregate.state.template();
        if !stored.is_empty() {
            tracing::info!(template = %template.name, id = %template.id, revision = template.revision, "system template registered");
        } else if current.is_some_and(|c| c.revision == template.revision && c != &template) {
            tracing::warn!(
                template = %template.name,
                revision = template.revision,
                "the system template differs from the one registered with the same revision; \
                 raise its revision in domain::template::system::SOURCES to register the change"
            );
        }
    }
    Ok(())
}
