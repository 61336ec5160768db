//! Rule G3: handlers never receive the caller's transaction.
use keel::Error;
use keel::postgres::Tx;

#[derive(serde::Serialize, serde::Deserialize)]
struct PostLiked {
    post_id: i64,
}

impl keel::DomainEvent for PostLiked {
    const NAME: &'static str = "post.liked.v1";
    const AGGREGATE_TYPE: &'static str = "Post";
    fn aggregate_id(&self) -> String {
        self.post_id.to_string()
    }
}

async fn count_like(_event: &PostLiked, _tx: &mut Tx<'_>) -> Result<(), Error> {
    Ok(())
}

keel::register_handler!(PostLiked => count_like);

fn main() {}
