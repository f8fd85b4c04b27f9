//! CSV response bodies written by a producer task and streamed in chunks: memory stays bounded
//! by the channel (a few chunks) however many rows there are, and a client that stops reading
//! stops the producer (its sends fail).

use bytes::Bytes;
use tokio::sync::mpsc;

/// Bytes per chunk handed to the HTTP body.
const CHUNK: usize = 64 * 1024;
/// Chunks buffered between the producer and the socket.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The client went away; the producer should stop.
#[derive(Debug)]
pub struct Closed;

/// The writing end of a streamed CSV body.
pub struct CsvSink {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    w: csv::Writer<Vec<u8>>,
}

fn writer() -> csv::Writer<Vec<u8>> {
    csv::WriterBuilder::new()
        .buffer_capacity(8 * 1024)
        .from_writer(Vec::with_capacity(CHUNK + 8 * 1024))
}

/// A CSV writer and the HTTP body it feeds.
pub fn channel() -> (CsvSink, poem::Body) {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let sink = CsvSink { tx, w: writer() };
    (sink, poem::Body::from_bytes_stream(stream))
}

impl CsvSink {
    /// Writes one record (fields are quoted when they need it: commas, quotes, line breaks).
    pub async fn record<I, T>(&mut self, fields: I) -> Result<(), Closed>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.w.write_record(fields).map_err(|_| Closed)?;
        if self.w.get_ref().len() >= CHUNK {
            self.send().await?;
        }
        Ok(())
    }

    async fn send(&mut self) -> Result<(), Closed> {
        let full = std::mem::replace(&mut self.w, writer());
        let chunk = full.into_inner().map_err(|_| Closed)?;
        if chunk.is_empty() {
            return Ok(());
        }
        self.tx
            .send(Ok(Bytes::from(chunk)))
            .await
            .map_err(|_| Closed)
    }

    /// Sends what is buffered and ends the body.
    pub async fn finish(mut self) -> Result<(), Closed> {
        self.send().await
    }

    /// Ends the body with an error: the client sees a broken transfer, never a short file that
    /// looks complete.
    pub async fn fail(self, why: String) {
        let _ = self.tx.send(Err(std::io::Error::other(why))).await;
    }
}
