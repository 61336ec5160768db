//! Rule G1: an event is recorded in the unit of work, never dispatched from it.
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
        .unit_of_work(async |_tx| {
            dispatcher.dispatch(PostLiked { post_id: 1 })?;
            Ok(())
        })
        .await
}

fn main() {}
