//! The same chat over both transports socket.io-client uses.

use serde_json::json;

use crate::{
    client::{Client, Credentials},
    helpers::*,
};

async fn chat_over(mut client: Client, app: &TestApp) {
    client.emit("chat:start", json!({ "message": "hello" })).await;
    let answer = read_answer(&mut client).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(answer.text(), ANSWER);
    assert_eq!(answer.final_data["content"], ANSWER);
    let row = app.message(answer.final_data["messageId"].as_str().unwrap()).await;
    assert_eq!(row.content, ANSWER);
}

#[tokio::test]
async fn a_chat_over_websocket() {
    let app = spawn_app().await;
    let client = Client::websocket(app.addr, Credentials::token(&token(&user()))).await.unwrap();
    chat_over(client, &app).await;
}

#[tokio::test]
async fn a_chat_over_long_polling() {
    let app = spawn_app().await;
    let client = Client::polling(app.addr, Credentials::token(&token(&user()))).await.unwrap();
    chat_over(client, &app).await;
}
