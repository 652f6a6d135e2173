//! Chat templates: render messages into segments that are or are not trained on.

use serde::Deserialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Text.
    pub content: String,
}

/// How a conversation becomes text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message (SmolLM2, Qwen).
    ChatMl,
    /// Contents concatenated as they are (prompt + completion).
    Plain,
}

impl ChatTemplate {
    /// `(text, trained)` segments: the assistant's content and end marker are trained on,
    /// everything else (system/user turns, role headers) is prompt.
    pub fn segments(&self, messages: &[ChatMessage]) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        for m in messages {
            let assistant = m.role == "assistant";
            match self {
                ChatTemplate::ChatMl => {
                    out.push((format!("<|im_start|>{}\n", m.role), false));
                    out.push((format!("{}<|im_end|>", m.content), assistant));
                    out.push(("\n".to_string(), false));
                }
                ChatTemplate::Plain => out.push((m.content.clone(), assistant)),
            }
        }
        out
    }

    /// Segments of a prompt/completion pair (prompt as a user turn, completion as the answer).
    pub fn prompt_completion(&self, prompt: &str, completion: &str) -> Vec<(String, bool)> {
        match self {
            ChatTemplate::ChatMl => self.segments(&[
                ChatMessage {
                    role: "user".into(),
                    content: prompt.into(),
                },
                ChatMessage {
                    role: "assistant".into(),
                    content: completion.into(),
                },
            ]),
            ChatTemplate::Plain => vec![(prompt.into(), false), (completion.into(), true)],
        }
    }
}
