//! Titles: after a new conversation's first answer, one short upstream call makes its
//! title, stored on the conversation and sent as `chat:title { conversationId, title }`
//! after `chat:end`. Once per conversation, never for a later answer, a failed answer or
//! with `TITLE_MODEL=off`; a failing title call leaves everything else as it was.

use sea_orm::EntityTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    client::Client,
    fake_upstream::{FakeUpstream, Reply, TOKENS},
    helpers::*,
};

const QUESTION: &str = "Explain how quantum computers use qubits and why that matters today";
/// The mock's title: the question's first six words.
const MOCK_TITLE: &str = "Explain how quantum computers use qubits";
const INSTRUCTION: &str = chatwire::chat::title::INSTRUCTION;

/// Starts `payload` and reads its answer to the final event.
async fn chat(client: &mut Client, payload: Value) -> (Value, Answer) {
    let ack = client.emit_with_ack("chat:start", payload).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    (ack, read_answer(client).await)
}

/// A server talking to `fake` with `TITLE_MODEL` as given, one attempt per request.
async fn app_for(fake: &FakeUpstream, title_model: &str) -> TestApp {
    spawn_app_with(&[
        ("OPENAI_BASE_URL", &fake.base_url()),
        ("OPENAI_API_KEY", "sk-test"),
        ("UPSTREAM_ATTEMPTS", "1"),
        ("TITLE_MODEL", title_model),
    ])
    .await
}

/// The conversation's stored title.
async fn stored_title(app: &TestApp, conversation_id: &Value) -> String {
    let id = Uuid::parse_str(conversation_id.as_str().unwrap()).unwrap();
    entity::Conversation::find_by_id(id).one(&app.state.db).await.unwrap().expect("stored conversation").title
}

/// What a title request must carry: the instruction, then the question and the answer.
fn title_messages(answer: &str) -> Value {
    json!([
        { "role": "system", "content": INSTRUCTION },
        { "role": "user", "content": format!("Question:\n{QUESTION}\n\nAnswer:\n{answer}") },
    ])
}

#[tokio::test]
async fn the_first_answer_of_a_new_conversation_gets_a_title_in_chat_title_the_row_and_the_list() {
    let app = spawn_app().await;
    let me = user();
    let mut client = app.client(&me).await;
    let (ack, answer) = chat(&mut client, json!({ "message": QUESTION })).await;
    assert_eq!(answer.final_name, "chat:end");
    let conversation = ack["conversationId"].clone();

    assert_eq!(client.title().await, json!({ "conversationId": conversation, "title": MOCK_TITLE }));
    assert_eq!(stored_title(&app, &conversation).await, MOCK_TITLE);
    let (_, list) = crate::rest::get(&app, "/v1/conversations", &me).await;
    assert_eq!(list["items"][0]["id"], conversation);
    assert_eq!(list["items"][0]["title"], MOCK_TITLE);

    // With the mock, the title is asked of the model that answered, apart from the chat.
    let titles = app.mock().title_requests();
    assert_eq!(titles.len(), 1);
    assert_eq!(titles[0]["model"], "gpt-4");
    assert_eq!(titles[0]["max_tokens"], 60);
    assert_eq!(titles[0]["messages"], title_messages(ANSWER));
    assert_eq!(app.mock().requests().len(), 1, "one chat request");

    // The second answer of the conversation asks for no title: the next title request
    // is the next new conversation's, and the only title sent since is its own.
    let (_, again) = chat(&mut client, json!({ "message": "and then?", "conversationId": conversation })).await;
    assert_eq!(again.final_name, "chat:end");
    let (next, _) = chat(&mut client, json!({ "message": "a new one" })).await;
    assert_eq!(client.title().await, json!({ "conversationId": next["conversationId"], "title": "a new one" }));
    assert_eq!(client.titles_seen(), Vec::<Value>::new());
    let asked: Vec<Value> = app.mock().title_requests().iter().map(|r| r["messages"][1]["content"].clone()).collect();
    assert_eq!(
        asked,
        [json!(format!("Question:\n{QUESTION}\n\nAnswer:\n{ANSWER}")), json!(format!("Question:\na new one\n\nAnswer:\n{ANSWER}"))]
    );
    assert_eq!(app.mock().requests().len(), 3);
    assert_eq!(stored_title(&app, &conversation).await, MOCK_TITLE);
}

#[tokio::test]
async fn title_model_names_the_model_routed_like_chat_models_and_the_reply_is_cleaned() {
    let fake = FakeUpstream::start(vec![Reply::Answer(TOKENS.to_vec()), Reply::Answer(vec!["  \"Qubits, ", "explained\"\n", "\n"])]).await;
    let app = app_for(&fake, "openai/titler").await;
    let mut client = app.client(&user()).await;
    let (ack, answer) = chat(&mut client, json!({ "message": QUESTION })).await;
    assert_eq!(answer.final_data["content"], TOKENS.concat());

    let title = client.title().await;
    assert_eq!(title, json!({ "conversationId": ack["conversationId"], "title": "Qubits, explained" }));
    assert_eq!(stored_title(&app, &ack["conversationId"]).await, "Qubits, explained");
    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0]["model"], "gpt-4");
    assert_eq!(requests[1]["model"], "titler");
    assert_eq!(requests[1]["messages"], title_messages(&TOKENS.concat()));
}

#[tokio::test]
async fn with_title_model_off_no_title_is_asked_for_or_sent() {
    let app = spawn_app_with(&[("TITLE_MODEL", "off")]).await;
    let mut client = app.client(&user()).await;
    let (ack, answer) = chat(&mut client, json!({ "message": QUESTION })).await;
    assert_eq!(answer.final_name, "chat:end");
    // A round trip after the end: a title, had one been sent, would have come before it.
    let history = client.emit_with_ack("chat:history", json!({ "conversationId": ack["conversationId"] })).await;
    assert_eq!(history["ok"], json!(true));
    assert_eq!(client.titles_seen(), Vec::<Value>::new());
    assert_eq!(app.mock().title_requests(), Vec::<Value>::new());
    assert_eq!(stored_title(&app, &ack["conversationId"]).await, QUESTION);
}

/// The answer's end and rows without anything that differs between two runs (ids, times).
async fn outcome(app: &TestApp, ack: &Value, answer: &Answer) -> Value {
    let mut end = answer.final_data.clone();
    for id in ["messageId", "conversationId"] {
        assert_eq!(end[id], ack[id]);
        end[id] = Value::Null;
    }
    let rows: Vec<Value> = app
        .messages(ack["conversationId"].as_str().unwrap())
        .await
        .iter()
        .map(|m| {
            json!([
                m.role,
                m.content,
                m.status,
                m.model,
                m.provider,
                m.prompt_tokens,
                m.completion_tokens,
                m.total_tokens,
                m.finish_reason,
                m.error_code,
                m.context_messages,
                m.attachments
            ])
        })
        .collect();
    // How many chunks the text came in depends on timing; the events around them do not.
    let order: Vec<&String> = answer.order.iter().filter(|name| *name != "chat:message").collect();
    json!({ "end": end, "order": order, "text": answer.text(), "rows": rows, "title": stored_title(app, &ack["conversationId"]).await })
}

#[tokio::test]
async fn a_failing_title_call_leaves_the_answer_its_end_and_its_rows_as_without_titles() {
    // Without titles, for comparison.
    let plain = FakeUpstream::start(vec![]).await;
    let off = app_for(&plain, "off").await;
    let mut client = off.client(&user()).await;
    let (ack, answer) = chat(&mut client, json!({ "message": QUESTION })).await;
    let expected = outcome(&off, &ack, &answer).await;
    assert_eq!(expected["title"], QUESTION);

    let fake = FakeUpstream::start(vec![Reply::Answer(TOKENS.to_vec()), Reply::Status(500, "boom")]).await;
    let app = app_for(&fake, "titler").await;
    let mut titles = app.state.engine.titles();
    let mut client = app.client(&user()).await;
    let (ack, answer) = chat(&mut client, json!({ "message": QUESTION })).await;
    let failed = titles.recv().await.unwrap();
    assert_eq!(failed.conversation_id.to_string(), ack["conversationId"].as_str().unwrap());
    assert_eq!(failed.title, None, "the call failed: no title");
    assert_eq!(outcome(&app, &ack, &answer).await, expected);

    // The socket goes on; its second answer asks for no title, and the first title sent
    // is the next new conversation's.
    let (_, next) = chat(&mut client, json!({ "message": "still there?", "conversationId": ack["conversationId"] })).await;
    assert_eq!(next.final_name, "chat:end");
    let (other, _) = chat(&mut client, json!({ "message": "a new one" })).await;
    assert_eq!(client.title().await, json!({ "conversationId": other["conversationId"], "title": TOKENS.concat() }));
    assert_eq!(client.titles_seen(), Vec::<Value>::new());
    let models: Vec<Value> = fake.requests().iter().map(|r| r["model"].clone()).collect();
    assert_eq!(models, [json!("gpt-4"), json!("titler"), json!("gpt-4"), json!("gpt-4"), json!("titler")]);
}

#[tokio::test]
async fn a_failed_answer_gets_no_title() {
    let fake = FakeUpstream::start(vec![Reply::Status(500, "boom"), Reply::Answer(TOKENS.to_vec()), Reply::Answer(vec!["Second"])]).await;
    let app = app_for(&fake, "titler").await;
    let mut client = app.client(&user()).await;
    let (_, failed) = chat(&mut client, json!({ "message": QUESTION })).await;
    assert_eq!(failed.final_name, "chat:error");
    // A second conversation's title comes; the failed one never asked for any.
    let (ack, answer) = chat(&mut client, json!({ "message": "another question" })).await;
    assert_eq!(answer.final_name, "chat:end");
    assert_eq!(client.title().await, json!({ "conversationId": ack["conversationId"], "title": "Second" }));
    let models: Vec<Value> = fake.requests().iter().map(|r| r["model"].clone()).collect();
    assert_eq!(models, [json!("gpt-4"), json!("gpt-4"), json!("titler")]);
}
