//! Example tokenisation: which positions are trained (-100 elsewhere), EOS trained.

use super::util::{decode, fixture, id, tokenizer};
use recipes::batching::chat::ChatTemplate;
use recipes::batching::examples::{Encoded, Encoder, Example, LossOn, IGNORE};
use recipes::batching::pack::pad_batch;
use recipes::data::{Message, Record, Role};
use tokenizers::Tokenizer;

fn template(tok: &Tokenizer, name: &str) -> ChatTemplate {
    let fx = fixture("chat_renders.json");
    let mut t = ChatTemplate::new(
        fx["templates"][name].as_str().unwrap(),
        &fx["specials"],
        tok,
    )
    .unwrap();
    t.set_now(fx["now_unix"].as_i64().unwrap());
    t
}

fn encoder<'a>(tok: &'a Tokenizer, t: Option<&'a ChatTemplate>, loss_on: LossOn) -> Encoder<'a> {
    Encoder {
        tokenizer: tok,
        template: t,
        eos_id: tok.token_to_id("<|endoftext|>").unwrap(),
        loss_on,
        use_chat_template: false,
        max_len: None,
    }
}

fn ok(e: Encoded) -> Example {
    match e {
        Encoded::Ok(x) => x,
        other => panic!("expected an example, got {other:?}"),
    }
}

/// The trained spans as decoded strings (maximal runs of labelled positions).
fn trained_spans(tok: &Tokenizer, ex: &Example) -> Vec<String> {
    let mut spans = Vec::new();
    let mut cur = Vec::new();
    for (i, &l) in ex.labels.iter().enumerate() {
        if l != IGNORE {
            assert_eq!(l, ex.input_ids[i], "a label is its own input token");
            cur.push(l);
        } else if !cur.is_empty() {
            spans.push(decode(tok, &cur));
            cur.clear();
        }
    }
    if !cur.is_empty() {
        spans.push(decode(tok, &cur));
    }
    spans
}

fn conv() -> Vec<Message> {
    let m = |role, c: &str| Message {
        role,
        content: c.into(),
    };
    vec![
        m(Role::System, "Be brief."),
        m(Role::User, "Hi there"),
        m(Role::Assistant, "Hello!"),
        m(Role::User, "Say it twice"),
        m(Role::Assistant, "é é"),
    ]
}

#[test]
fn prompt_completion_trains_completion_and_eos_only() {
    let tok = tokenizer();
    let enc = encoder(&tok, None, LossOn::Assistant);
    let rec = Record::PromptCompletion {
        prompt: "What is 2+2?".into(),
        completion: " 4".into(),
    };
    let ex = ok(enc.example(&rec).unwrap());
    let p = tok.encode("What is 2+2?", true).unwrap().get_ids().len();
    let eos = id(&tok, "<|endoftext|>");
    assert_eq!(*ex.input_ids.last().unwrap(), eos, "EOS appended");
    assert_eq!(*ex.labels.last().unwrap(), eos, "EOS trained");
    assert!(
        ex.labels[..p].iter().all(|&l| l == IGNORE),
        "prompt masked: {:?}",
        ex.labels
    );
    assert!(ex.labels[p..].iter().all(|&l| l != IGNORE));
    assert_eq!(trained_spans(&tok, &ex), vec![" 4<|endoftext|>"]);
    assert_eq!(ex.n_targets(), ex.len() - p);

    let all = ok(encoder(&tok, None, LossOn::All).example(&rec).unwrap());
    assert_eq!(all.labels, all.input_ids);
}

/// pad == eos must not mask the EOS: masking is by position.
#[test]
fn eos_trained_when_pad_is_eos() {
    let tok = tokenizer();
    let enc = encoder(&tok, None, LossOn::Assistant);
    let eos = id(&tok, "<|endoftext|>");
    let a = ok(enc
        .example(&Record::PromptCompletion {
            prompt: "a b".into(),
            completion: " c".into(),
        })
        .unwrap());
    let b = ok(enc
        .example(&Record::PromptCompletion {
            prompt: "the quick brown fox".into(),
            completion: " jumps over the lazy dog".into(),
        })
        .unwrap());
    let batch = pad_batch(&[a.clone(), b.clone()], eos, None);
    let row0 = &batch.labels[..batch.cols];
    assert_eq!(row0[a.len() - 1], eos, "EOS of the short row is trained");
    assert!(
        row0[a.len()..].iter().all(|&l| l == IGNORE),
        "padding (also id {eos}) is not"
    );
    assert_eq!(batch.input_ids[a.len()], eos);
    assert_eq!(batch.n_target_tokens, a.n_targets() + b.n_targets());
}

#[test]
fn chatml_messages_train_assistant_turns_with_end_of_turn() {
    let tok = tokenizer();
    let t = template(&tok, "chatml");
    let ex = ok(encoder(&tok, Some(&t), LossOn::Assistant)
        .example(&Record::Messages { messages: conv() })
        .unwrap());
    assert_eq!(
        decode(&tok, &ex.input_ids),
        t.render(&conv(), false).unwrap()
    );
    assert_eq!(
        trained_spans(&tok, &ex),
        vec!["Hello!<|im_end|>\n", "é é<|im_end|>\n"]
    );

    let all = ok(encoder(&tok, Some(&t), LossOn::All)
        .example(&Record::Messages { messages: conv() })
        .unwrap());
    assert_eq!(all.labels, all.input_ids);
}

#[test]
fn llama3_messages_train_assistant_turns_with_eot() {
    let tok = tokenizer();
    let t = template(&tok, "llama3");
    let ex = ok(encoder(&tok, Some(&t), LossOn::Assistant)
        .example(&Record::Messages { messages: conv() })
        .unwrap());
    assert_eq!(ex.input_ids[0], id(&tok, "<|begin_of_text|>"));
    assert_eq!(
        trained_spans(&tok, &ex),
        vec!["Hello!<|eot_id|>", "é é<|eot_id|>"]
    );
}

#[test]
fn prompt_completion_with_chat_template() {
    let tok = tokenizer();
    let t = template(&tok, "chatml");
    let mut enc = encoder(&tok, Some(&t), LossOn::Assistant);
    enc.use_chat_template = true;
    let ex = ok(enc
        .example(&Record::PromptCompletion {
            prompt: "What is 2+2?".into(),
            completion: "4".into(),
        })
        .unwrap());
    assert_eq!(trained_spans(&tok, &ex), vec!["4<|im_end|>\n"]);
    assert!(
        decode(&tok, &ex.input_ids).starts_with("<|im_start|>system\nYou are a helpful assistant.")
    );

    // Without a template, asking for one is an error.
    let mut enc = encoder(&tok, None, LossOn::Assistant);
    enc.use_chat_template = true;
    let e = enc
        .example(&Record::PromptCompletion {
            prompt: "a".into(),
            completion: "b".into(),
        })
        .unwrap_err();
    assert!(format!("{e:#}").contains("no chat template"), "{e:#}");
}

#[test]
fn too_long_is_a_typed_outcome_and_documents_get_eos() {
    let tok = tokenizer();
    let mut enc = encoder(&tok, None, LossOn::Assistant);
    let rec = Record::PromptCompletion {
        prompt: "the quick brown fox".into(),
        completion: " jumps over the lazy dog".into(),
    };
    let n = ok(enc.example(&rec).unwrap()).len();
    enc.max_len = Some(n - 1);
    assert_eq!(
        enc.example(&rec).unwrap(),
        Encoded::TooLong {
            len: n,
            max: n - 1,
            exact: true
        }
    );
    enc.max_len = Some(n);
    assert!(matches!(enc.example(&rec).unwrap(), Encoded::Ok(_)));
    // A record far beyond the limit is refused from its size, before tokenising it (a 50 MB
    // line used to cost minutes and gigabytes before being skipped).
    enc.max_len = Some(8);
    let huge = Record::PromptCompletion {
        prompt: "a ".repeat(1 << 20),
        completion: "b".into(),
    };
    match enc.example(&huge).unwrap() {
        Encoded::TooLong {
            len,
            max: 8,
            exact: false,
        } => assert!(len > 8, "{len}"),
        other => panic!("{other:?}"),
    }
    enc.max_len = Some(n);

    let doc = enc.document("Hello there").unwrap();
    assert_eq!(decode(&tok, &doc), "Hello there<|endoftext|>");
    assert!(enc
        .example(&Record::Preference {
            prompt: recipes::data::Turns::Text("p".into()),
            chosen: recipes::data::Turns::Text("a".into()),
            rejected: recipes::data::Turns::Text("b".into()),
        })
        .is_err());
}
