//! The provider registry against three fakes on loopback, each with its own quirks:
//! routing, the default, INVALID_MODEL, fallbacks, the cool-down, and each quirk, with
//! the client's text, `chat:end` and the stored row agreeing.

use serde_json::{Value, json};

use crate::{
    helpers::*,
    quirky_upstream::{Quirks, QuirkyUpstream},
};

/// gem: usage on the last content chunk, models discovered. mis: 422 to `stream_options`,
/// no usage, models listed. orr: comments and reasoning, models listed, the default.
pub struct Three {
    pub gem: QuirkyUpstream,
    pub mis: QuirkyUpstream,
    pub orr: QuirkyUpstream,
    pub app: TestApp,
    _file: tempfile::TempDir,
}

pub async fn three(extra_toml: &str, vars: &[(&str, &str)]) -> Three {
    let gem =
        QuirkyUpstream::start("gem", Quirks { usage_on_last_content: true, ..Quirks::default() }, Some(vec!["gem-pro", "fail-503"])).await;
    let mis = QuirkyUpstream::start("mis", Quirks { refuse_stream_options: true, no_usage: true, ..Quirks::default() }, None).await;
    let orr = QuirkyUpstream::start("orr", Quirks { comments: true, reasoning: true, ..Quirks::default() }, None).await;
    let toml = format!(
        r#"
default = "orr"

[[providers]]
name = "gem"
display_name = "Gemini-like"
base_url = "{}"
api_key_env = "GEM_KEY"

[[providers]]
name = "mis"
base_url = "{}"
models = ["mis-large", "fail-503", "cut-after-2"]

[[providers]]
name = "orr"
base_url = "{}"
models = ["orr-1", "error-mid", "no-finish", "plain", "x-groq"]
{extra_toml}
"#,
        gem.base_url(),
        mis.base_url(),
        orr.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.toml");
    std::fs::write(&path, toml).unwrap();
    let path = path.display().to_string();
    let mut all = vec![("PROVIDERS_FILE", path.as_str()), ("GEM_KEY", "sk-gem"), ("UPSTREAM_ATTEMPTS", "1")];
    all.extend_from_slice(vars);
    let app = spawn_app_with(&all).await;
    Three { gem, mis, orr, app, _file: dir }
}

/// Starts one answer and reads it to its end: its ack, its events, its stored row.
pub async fn ask(app: &TestApp, start: Value) -> (Value, Answer, entity::message::Model) {
    let mut client = app.client(&user()).await;
    let mut payload = start;
    payload["message"] = json!("hello");
    let ack = client.emit_with_ack("chat:start", payload).await;
    assert_eq!(ack["ok"], json!(true), "{ack}");
    let answer = read_answer(&mut client).await;
    let row = app.message(ack["messageId"].as_str().unwrap()).await;
    (ack, answer, row)
}

/// The ack of a refused start.
async fn refused(app: &TestApp, start: Value) -> Value {
    let mut client = app.client(&user()).await;
    let mut payload = start;
    payload["message"] = json!("hello");
    let ack = client.emit_with_ack("chat:start", payload).await;
    assert_eq!(ack["ok"], json!(false), "{ack}");
    ack["error"]["code"].clone()
}

fn models_asked(fake: &QuirkyUpstream) -> Vec<String> {
    fake.requests().iter().map(|r| r["model"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_prefix_a_provider_field_a_listed_bare_name_and_the_default_each_pick_their_provider() {
    let t = three("[aliases]\n\"gpt-4\" = \"mis/mis-large\"\n", &[]).await;
    let cases = [
        (json!({ "model": "gem/gem-pro" }), &t.gem, "gem-pro"),
        (json!({ "provider": "mis", "model": "mis-large" }), &t.mis, "mis-large"),
        // Listed by mis only; discovered from gem's GET /models.
        (json!({ "model": "mis-large" }), &t.mis, "mis-large"),
        (json!({ "model": "gem-pro" }), &t.gem, "gem-pro"),
        // No provider lists it: the default, unchanged.
        (json!({ "model": "some-new-model" }), &t.orr, "some-new-model"),
        // The alias a hard-coded client sends.
        (json!({ "model": "gpt-4" }), &t.mis, "mis-large"),
    ];
    for (start, fake, model) in cases {
        let (_, answer, row) = ask(&t.app, start.clone()).await;
        assert_eq!(answer.final_name, "chat:end", "{start}: {}", answer.final_data);
        assert_eq!(answer.text(), fake.answer(), "{start}");
        assert_eq!((answer.final_data.get("provider"), answer.final_data["model"].as_str()), (None, Some(model)), "{start}");
        assert_eq!(
            (row.provider.as_deref(), row.model.as_deref(), row.content.as_str()),
            (Some(fake.name), Some(model), fake.answer().as_str())
        );
        assert_eq!(models_asked(fake).last().map(String::as_str), Some(model), "{start}: the bare name reaches the provider");
    }
}

#[tokio::test]
async fn an_unknown_provider_or_an_unlisted_model_is_invalid_model_before_any_upstream_call() {
    let t = three("", &[]).await;
    for start in [
        json!({ "model": "nope/x" }),
        json!({ "provider": "nope", "model": "x" }),
        json!({ "model": "mis/not-listed" }),
        json!({ "provider": "orr", "model": "not-listed" }),
    ] {
        assert_eq!(refused(&t.app, start.clone()).await, json!("INVALID_MODEL"), "{start}");
    }
    for fake in [&t.gem, &t.mis, &t.orr] {
        assert!(fake.requests().is_empty(), "{} was not called", fake.name);
    }
}

#[tokio::test]
async fn a_503_before_the_first_token_falls_back_and_benches_the_provider() {
    let t = three("[models.\"best\"]\nfallbacks = [\"mis/mis-large\"]\n[aliases]\nbest = \"gem/fail-503\"\n", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "best" })).await;
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.text(), t.mis.answer());
    assert_eq!((answer.final_data.get("provider"), answer.final_data["model"].as_str()), (None, Some("mis-large")));
    assert_eq!((row.provider.as_deref(), row.model.as_deref(), row.status.as_str()), (Some("mis"), Some("mis-large"), "complete"));
    assert_eq!(models_asked(&t.gem), ["fail-503"]);
    // Within its cool-down gem is passed over: the next answer goes straight to mis.
    let (_, again, row) = ask(&t.app, json!({ "model": "best" })).await;
    assert_eq!((again.final_name.as_str(), row.provider.as_deref()), ("chat:end", Some("mis")));
    assert_eq!(models_asked(&t.gem), ["fail-503"], "benched: not asked again");
}

#[tokio::test]
async fn a_refused_connection_falls_back_to_the_next_provider() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let extra = format!(
        "[[providers]]\nname = \"gone\"\nbase_url = \"{url}\"\nmodels = [\"m\"]\n[models.\"gone/m\"]\nfallbacks = [\"orr/orr-1\"]\n"
    );
    let t = three(&extra, &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "gone/m" })).await;
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.text(), t.orr.answer());
    assert_eq!((row.provider.as_deref(), row.model.as_deref()), (Some("orr"), Some("orr-1")));
}

#[tokio::test]
async fn a_failure_after_the_first_token_is_not_retried_elsewhere() {
    let t = three("[models.\"mis/cut-after-2\"]\nfallbacks = [\"orr/orr-1\"]\n", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "mis/cut-after-2" })).await;
    assert_eq!((answer.final_name.as_str(), answer.final_data["code"].as_str()), ("chat:error", Some("UPSTREAM_ERROR")));
    assert_eq!(answer.text(), "Hi from ");
    assert_eq!((row.status.as_str(), row.content.as_str(), row.provider.as_deref()), ("error", "Hi from ", Some("mis")));
    assert!(t.orr.requests().is_empty(), "no fallback once text went out");
}

#[tokio::test]
async fn usage_on_the_last_content_chunk_is_counted() {
    let t = three("", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "gem/gem-pro" })).await;
    let end = &answer.final_data;
    assert_eq!(answer.text(), "Hi from gem.");
    assert_eq!(
        (end["promptTokens"].clone(), end["completionTokens"].clone(), end["totalTokens"].clone()),
        (json!(11), json!(4), json!(15))
    );
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens, row.finish_reason.as_deref()),
        (Some(11), Some(4), Some(15), Some("stop"))
    );
}

#[tokio::test]
async fn usage_asked_for_and_sent_in_x_groq_on_the_finish_chunk_is_counted() {
    let t = three("", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "orr/x-groq" })).await;
    assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", "Hi from orr.".to_owned()));
    let asked: Vec<Value> = t.orr.requests().iter().map(|r| r["stream_options"].clone()).collect();
    assert_eq!(asked, [json!({ "include_usage": true })], "usage is asked for");
    let end = &answer.final_data;
    assert_eq!(
        (end["promptTokens"].clone(), end["completionTokens"].clone(), end["totalTokens"].clone()),
        (json!(11), json!(4), json!(15))
    );
    assert_eq!((row.prompt_tokens, row.completion_tokens, row.total_tokens), (Some(11), Some(4), Some(15)));
}

#[tokio::test]
async fn a_422_to_stream_options_is_asked_again_without_and_remembered_and_no_usage_is_null() {
    let t = three("", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "mis/mis-large" })).await;
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.text(), "Hi from mis.");
    let sent: Vec<bool> = t.mis.requests().iter().map(|r| r.get("stream_options").is_some()).collect();
    assert_eq!(sent, [true, false], "refused once, then asked without");
    let end = &answer.final_data;
    assert_eq!(
        (end["promptTokens"].clone(), end["completionTokens"].clone(), end["totalTokens"].clone()),
        (Value::Null, Value::Null, Value::Null)
    );
    assert_eq!((row.prompt_tokens, row.completion_tokens, row.total_tokens), (None, None, None), "no usage is NULL, not 0");
    ask(&t.app, json!({ "model": "mis/mis-large" })).await;
    let sent: Vec<bool> = t.mis.requests().iter().map(|r| r.get("stream_options").is_some()).collect();
    assert_eq!(sent, [true, false, false], "remembered for the provider");
}

#[tokio::test]
async fn comment_lines_and_reasoning_deltas_stay_out_of_the_answer() {
    let t = three("", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "orr/orr-1" })).await;
    assert_eq!(answer.final_name, "chat:end", "{}", answer.final_data);
    assert_eq!(answer.text(), "Hi from orr.");
    assert_eq!(answer.final_data["content"], json!("Hi from orr."));
    assert_eq!((row.content.as_str(), row.completion_tokens), ("Hi from orr.", Some(4)));
}

#[tokio::test]
async fn an_error_inside_the_stream_is_upstream_error_with_the_partial_answer_stored() {
    let t = three("", &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "orr/error-mid" })).await;
    assert_eq!((answer.final_name.as_str(), answer.final_data["code"].as_str()), ("chat:error", Some("UPSTREAM_ERROR")));
    assert_eq!(answer.text(), "Hi from ");
    assert_eq!((row.status.as_str(), row.content.as_str(), row.error_code.as_deref()), ("error", "Hi from ", Some("UPSTREAM_ERROR")));
    let (_, answer, row) = ask(&t.app, json!({ "model": "orr/no-finish" })).await;
    assert_eq!((answer.final_name.as_str(), answer.final_data["code"].as_str()), ("chat:error", Some("UPSTREAM_ERROR")));
    assert_eq!((answer.text(), row.content), ("Hi from orr.".to_owned(), "Hi from orr.".to_owned()));
}

#[tokio::test]
async fn a_benched_provider_is_asked_again_once_its_cool_down_is_over() {
    let flaky = QuirkyUpstream::start("flaky", Quirks::default(), None).await;
    let extra = format!(
        "[[providers]]\nname = \"flaky\"\nbase_url = \"{}\"\nmodels = [\"fail-503\"]\ncooldown_secs = 1\n\
         [models.\"best\"]\nfallbacks = [\"mis/mis-large\"]\n[aliases]\nbest = \"flaky/fail-503\"\n",
        flaky.base_url()
    );
    let t = three(&extra, &[]).await;
    let (_, answer, row) = ask(&t.app, json!({ "model": "best" })).await;
    assert_eq!((answer.final_name.as_str(), row.provider.as_deref()), ("chat:end", Some("mis")), "{}", answer.final_data);
    assert_eq!(models_asked(&flaky), ["fail-503"], "asked, refused with 503, benched");
    // Ask until the fake's log shows flaky asked again (bounded): every answer meanwhile is
    // mis's, whether flaky was passed over or asked and refused again.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut answers = 1;
    while models_asked(&flaky).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "flaky was never asked again after its 1 s cool-down");
        let (_, answer, row) = ask(&t.app, json!({ "model": "best" })).await;
        assert_eq!((answer.final_name.as_str(), answer.text()), ("chat:end", t.mis.answer()));
        assert_eq!((row.provider.as_deref(), row.model.as_deref(), row.status.as_str()), (Some("mis"), Some("mis-large"), "complete"));
        answers += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(models_asked(&flaky), ["fail-503", "fail-503"], "asked once more after the cool-down, then benched again");
    // mis refuses `stream_options` once (its quirk); every answer is one request without.
    let answered = t.mis.requests().iter().filter(|r| r.get("stream_options").is_none()).count();
    assert_eq!(answered, answers, "mis answered each time");
}
