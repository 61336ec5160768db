//! Rule G1: the events of an open transaction cannot be released; only its commit can.
use keel::Error;
use keel::postgres::App;

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

async fn like(app: &App) -> Result<(), Error> {
    let dispatcher = app.dispatcher();
    app.session()
        .unit_of_work(async |tx| {
            tx.record(PostLiked { post_id: 1 })?;
            dispatcher.dispatch(tx.recorded())?;
            Ok(())
        })
        .await
}

fn main() {}
