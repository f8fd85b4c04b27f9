//! Contact aliases (`funnel_contact_aliases`): a WhatsApp business-scoped user id seen with a
//! phone. The contract's rule: a contact is keyed by its phone when a message has one, else by
//! its user id; once a message carries both, later messages with only the user id are keyed
//! by the phone. The first pairing of a user id stays (Meta gives a new user id when a person
//! changes number).

use std::collections::HashMap;

use sqlx::PgPool;

/// The phones the given user ids of `tenant` are aliases of.
pub async fn phones_of(
    pool: &PgPool,
    tenant: &str,
    user_ids: &[&str],
) -> Result<HashMap<String, String>, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT business_user_id, phone FROM funnel_contact_aliases
          WHERE tenant = $1 AND business_user_id = ANY($2)",
    )
    .bind(tenant)
    .bind(user_ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Records (user id, phone, first event id) pairings of `tenant`; a user id already paired
/// keeps its phone.
pub async fn record(
    pool: &PgPool,
    tenant: &str,
    pairs: &[(&str, &str, &str)],
) -> Result<(), sqlx::Error> {
    if pairs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO funnel_contact_aliases (tenant, business_user_id, phone, first_event_id)
         SELECT $1, u, p, e FROM UNNEST($2::text[], $3::text[], $4::text[]) AS t(u, p, e)
         ON CONFLICT (tenant, business_user_id) DO NOTHING",
    )
    .bind(tenant)
    .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
    .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
    .bind(pairs.iter().map(|p| p.2).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}
