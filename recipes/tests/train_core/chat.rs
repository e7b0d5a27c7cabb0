//! Chat templates: renders against transformers' output, template loading forms, errors.

use super::util::{fixture, tokenizer};
use recipes::batching::chat::{py_float, strftime, ChatTemplate};
use recipes::data::{Message, Role};
use serde_json::{json, Value as J};

fn messages(v: &J) -> Vec<Message> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| Message {
            role: Role::parse(m["role"].as_str().unwrap()).unwrap(),
            content: m["content"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Every (template, conversation, add_generation_prompt) case renders exactly as
/// transformers' `render_jinja_template` (Jinja2) did.
#[test]
fn renders_match_transformers() {
    let fx = fixture("chat_renders.json");
    let tok = tokenizer();
    let config = fx["specials"].clone();
    let mut n = 0;
    for case in fx["cases"].as_array().unwrap() {
        let tname = case["template"].as_str().unwrap();
        let src = fx["templates"][tname].as_str().unwrap();
        let mut t = ChatTemplate::new(src, &config, &tok).unwrap();
        t.set_now(fx["now_unix"].as_i64().unwrap());
        let conv = messages(&fx["conversations"][case["conversation"].as_str().unwrap()]);
        let gen = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&conv, gen).unwrap();
        assert_eq!(
            got,
            case["expected"].as_str().unwrap(),
            "{tname} / {} / gen={gen}",
            case["conversation"]
        );
        n += 1;
    }
    assert_eq!(n, 24);
}

#[test]
fn loads_from_jinja_file_config_string_and_named_list() {
    let tok = tokenizer();
    let chatml =
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}";
    let msgs = vec![Message {
        role: Role::User,
        content: "hi".into(),
    }];
    let want = "<|im_start|>user\nhi<|im_end|>\n";

    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("chat_template.jinja"), chatml).unwrap();
    std::fs::write(
        d.path().join("tokenizer_config.json"),
        r#"{"chat_template": "ignored {{ x }}"}"#,
    )
    .unwrap();
    let t = ChatTemplate::load(d.path(), &tok).unwrap().unwrap();
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        want,
        "chat_template.jinja wins"
    );

    let d = tempfile::tempdir().unwrap();
    let cfg = json!({"chat_template": chatml, "eos_token": "<|im_end|>"});
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::load(d.path(), &tok).unwrap().unwrap();
    assert_eq!(t.render(&msgs, false).unwrap(), want);

    let d = tempfile::tempdir().unwrap();
    let cfg = json!({"chat_template": [
        {"name": "tool_use", "template": "TOOLS"},
        {"name": "default", "template": chatml}
    ]});
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let t = ChatTemplate::load(d.path(), &tok).unwrap().unwrap();
    assert_eq!(
        t.render(&msgs, false).unwrap(),
        want,
        "the \"default\" template of the list"
    );

    let d = tempfile::tempdir().unwrap();
    let cfg = json!({"chat_template": [{"name": "tool_use", "template": "TOOLS"}]});
    std::fs::write(d.path().join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let e = format!("{:#}", ChatTemplate::load(d.path(), &tok).err().unwrap());
    assert!(
        e.contains("without a \"default\"") && e.contains("tool_use"),
        "{e}"
    );

    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tokenizer_config.json"), "{}").unwrap();
    assert!(ChatTemplate::load(d.path(), &tok).unwrap().is_none());
}

#[test]
fn template_tokens_missing_from_the_tokenizer_are_errors() {
    let tok = tokenizer();
    let e = ChatTemplate::new("{{ '<|user|>' + messages[0].content }}", &json!({}), &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("\"<|user|>\"") && e.contains("does not have"),
        "{e}"
    );

    let e = ChatTemplate::new("{{ bos_token }}{{ messages[0].content }}", &json!({}), &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("`bos_token`") && e.contains("does not define"),
        "{e}"
    );

    let e = ChatTemplate::new("{{ eos_token }}", &json!({"eos_token": "</s>"}), &tok)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("`eos_token` = \"</s>\""), "{e}");

    // `{"content": …}` token entries (older configs) are understood.
    let t = ChatTemplate::new(
        "{{ eos_token }}",
        &json!({"eos_token": {"content": "<|im_end|>"}}),
        &tok,
    )
    .unwrap();
    assert_eq!(t.render(&[], false).unwrap(), "<|im_end|>");
}

#[test]
fn raise_exception_and_generation_tags() {
    let tok = tokenizer();
    let t = ChatTemplate::new(
        "{% if messages[0].role != 'user' %}{{ raise_exception('first turn must be the user') }}{% endif %}ok",
        &json!({}),
        &tok,
    )
    .unwrap();
    let sys = vec![Message {
        role: Role::System,
        content: "s".into(),
    }];
    let e = t.render(&sys, false).err().unwrap().to_string();
    assert!(e.contains("first turn must be the user"), "{e}");

    let t = ChatTemplate::new(
        "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}[{{ m.content }}]{% endif %}{% endfor %}",
        &json!({}),
        &tok,
    )
    .unwrap();
    let conv = vec![
        Message {
            role: Role::User,
            content: "q".into(),
        },
        Message {
            role: Role::Assistant,
            content: "a".into(),
        },
    ];
    assert_eq!(t.render(&conv, false).unwrap(), "[q]a");
}

#[test]
fn python_float_repr_and_strftime() {
    for (f, s) in [
        (1.0, "1.0"),
        (1.5, "1.5"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (1e16, "1e+16"),
        (123456789012345.0, "123456789012345.0"),
        (-2.5e-7, "-2.5e-07"),
        (0.1, "0.1"),
    ] {
        assert_eq!(py_float(f), s, "{f}");
    }
    // 2024-02-29 23:59:58 UTC, a Thursday, day 60 of a leap year.
    let t = 1_709_251_198;
    assert_eq!(
        strftime("%Y-%m-%d %H:%M:%S %a %A %b %B %j %y %%", t).unwrap(),
        "2024-02-29 23:59:58 Thu Thursday Feb February 060 24 %"
    );
    assert_eq!(strftime("%d %b %Y", 0).unwrap(), "01 Jan 1970");
    assert!(strftime("%Q", 0).is_err());
}
