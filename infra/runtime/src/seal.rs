//! Sealed values: encrypted and authenticated with ChaCha20-Poly1305 under a key kept in
//! PostgreSQL (`funnel_secrets`, made by the migrations, so every instance shares it). The API's
//! paging cursors (`cursor_key`: a client learns nothing from one and cannot forge one) and the
//! channels' secrets at rest (`channel_key`: Meta app secrets and access tokens, which the
//! service must use, so they cannot be hashed).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// Bytes of the random nonce in front of every sealed value.
const NONCE: usize = 12;

pub struct Sealer(ChaCha20Poly1305);

impl Sealer {
    /// A sealer with a 32-byte key.
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() != 32 {
            return Err(format!("a key of {} bytes; expected 32", key.len()));
        }
        Ok(Sealer(ChaCha20Poly1305::new(Key::from_slice(key))))
    }

    /// The sealer under the key the migrations stored as `name`.
    pub async fn load(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<Self> {
        let key: Vec<u8> = sqlx::query_scalar("SELECT value FROM funnel_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await?;
        Sealer::new(&key).map_err(|e| anyhow::anyhow!("funnel_secrets {name}: {e}"))
    }

    /// `plain`, encrypted under a fresh nonce, as URL-safe base64.
    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        // Encryption into a Vec fails only past 2^38 bytes.
        let sealed = self.0.encrypt(&nonce, plain).unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend(sealed);
        URL_SAFE_NO_PAD.encode(out)
    }

    /// What [`Sealer::seal`] sealed; `None` for anything it did not seal under this key.
    pub fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let bytes = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if bytes.len() < NONCE {
            return None;
        }
        let (nonce, body) = bytes.split_at(NONCE);
        self.0.decrypt(Nonce::from_slice(nonce), body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_reveal_nothing() {
        let a = Sealer::new(&[7; 32]).expect("key");
        let plain = b"lead_at|1795399200000000|+6281234567890";
        let sealed = a.seal(plain);
        assert!(!sealed.contains("6281234567890"));
        assert_eq!(a.open(&sealed).as_deref(), Some(&plain[..]));
        // A fresh nonce each time: the same value seals differently.
        assert_ne!(a.seal(plain), sealed);
        let b = Sealer::new(&[8; 32]).expect("key");
        assert_eq!(b.open(&sealed), None);
        let mut forged = sealed.clone();
        forged.replace_range(20..21, if &sealed[20..21] == "A" { "B" } else { "A" });
        assert_eq!(a.open(&forged), None);
        assert_eq!(a.open("not base64 at all!"), None);
        assert!(Sealer::new(&[0; 16]).is_err());
    }
}
