//! Validation limits of the Kanban app, shared so a client can check input before it queues a write the server
//! would refuse.

/// Longest board, column or card title, in characters (not bytes).
pub const MAX_TITLE_CHARS: usize = 200;
/// Longest card description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;

/// Checks a title: trimmed, not empty, at most [`MAX_TITLE_CHARS`]. Returns the trimmed title or a message.
pub fn validate_title(title: &str) -> Result<String, String> {
    let trimmed = title.trim();
    if trimmed.is_empty() {
        return Err("title must not be empty".into());
    }
    let chars = trimmed.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(format!("title is {chars} characters long; the limit is {MAX_TITLE_CHARS}"));
    }
    Ok(trimmed.to_owned())
}

/// Checks a card description: at most [`MAX_DESCRIPTION_CHARS`]; may be empty.
pub fn validate_description(description: &str) -> Result<String, String> {
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(format!("description is {chars} characters long; the limit is {MAX_DESCRIPTION_CHARS}"));
    }
    Ok(description.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(validate_title("  Todo ").unwrap(), "Todo");
        assert!(validate_title("   ").is_err());
        assert!(validate_title(&"é".repeat(MAX_TITLE_CHARS)).is_ok());
        assert!(validate_title(&"é".repeat(MAX_TITLE_CHARS + 1)).is_err());
    }

    #[test]
    fn descriptions_may_be_empty_but_bounded() {
        assert!(validate_description("").is_ok());
        assert!(validate_description(&"x".repeat(MAX_DESCRIPTION_CHARS + 1)).is_err());
    }
}
