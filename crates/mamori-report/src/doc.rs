//! A small document model that both renderers (HTML and PDF) draw: the report builders say
//! *what* to show, the renderers *how*.

/// A document: a title and blocks in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    /// `ja` or `en` (HTML `lang`).
    pub lang: String,
    /// Title.
    pub title: String,
    /// Body.
    pub blocks: Vec<Block>,
}

/// How loud a callout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Red.
    Danger,
    /// Orange.
    Warning,
    /// Grey-blue.
    Info,
}

/// One block.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// A section heading.
    Heading(String),
    /// A paragraph.
    Para(String),
    /// A highlighted paragraph.
    Callout(Tone, String),
    /// A bulleted list.
    Bullets(Vec<String>),
    /// A numbered list (steps).
    Steps(Vec<String>),
    /// Label: value pairs.
    Fields(Vec<(String, String)>),
    /// A table: header and rows.
    Table(Vec<String>, Vec<Vec<String>>),
    /// A horizontal bar chart: title and (label, value).
    Bars(String, Vec<(String, u64)>),
}

impl Doc {
    /// A new document.
    pub fn new(lang: &str, title: impl Into<String>) -> Doc {
        Doc {
            lang: lang.into(),
            title: title.into(),
            blocks: Vec::new(),
        }
    }

    /// Adds a block.
    pub fn push(&mut self, b: Block) -> &mut Doc {
        self.blocks.push(b);
        self
    }
}
