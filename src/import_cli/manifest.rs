//! What `facevault import` reads: a folder (`<external_id>/<photo>` or `<external_id>.<ext>`)
//! or a CSV manifest (header `external_id,image[,display_name,email,phone,comment]`), the local
//! checks of its rows, each row's request id, and the CSV reading and writing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// One item to import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Row {
    /// The row's name in progress and report: the CSV line, or the path under the folder.
    pub(super) item_id: String,
    pub(super) external_id: String,
    pub(super) image: PathBuf,
    pub(super) display_name: String,
    pub(super) email: String,
    pub(super) phone: String,
    pub(super) comment: String,
}

impl Row {
    /// The request id of this row's photo under `policies` (the import's flags): the same
    /// person and photo always get the same id, so a second run replays what the first one
    /// imported. A row whose other fields (an e-mail, the comment) changed in between is then
    /// refused REQUEST_ID_REUSED instead of adding the photo a second time.
    pub(super) fn request_id(&self, image: &[u8], policies: &str) -> String {
        let mut hash = Sha256::new();
        for field in [self.external_id.as_str(), policies] {
            hash.update(field.as_bytes());
            hash.update([0]);
        }
        hash.update(Sha256::digest(image));
        let hex: String = hash.finalize().iter().take(20).map(|b| format!("{b:02x}")).collect();
        format!("imp-{hex}")
    }
}

const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The rows of `source`: a CSV file, or a folder.
pub(super) fn read(source: &Path) -> Result<Vec<Row>, String> {
    if source.is_dir() {
        return read_folder(source);
    }
    let text = std::fs::read_to_string(source).map_err(|e| format!("{}: {e}", source.display()))?;
    let base = source.parent().unwrap_or(Path::new("."));
    read_csv(&text, base).map_err(|e| format!("{}: {e}", source.display()))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        entries.push(entry.map_err(|e| format!("{}: {e}", dir.display()))?.path());
    }
    entries.sort();
    Ok(entries)
}

/// `<external_id>/<photo>` (one item per photo) and `<external_id>.<ext>`, in name order.
fn read_folder(dir: &Path) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            let external_id = name(&path);
            for photo in sorted_entries(&path)?.into_iter().filter(|p| p.is_file() && is_image(p)) {
                let item_id = format!("{external_id}/{}", name(&photo));
                rows.push(Row { item_id, external_id: external_id.clone(), image: photo, ..Row::default() });
            }
        } else if is_image(&path) {
            let external_id = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            rows.push(Row { item_id: name(&path), external_id, image: path, ..Row::default() });
        }
    }
    Ok(rows)
}

/// A CSV manifest with a header; image paths relative to `base`.
pub(super) fn read_csv(text: &str, base: &Path) -> Result<Vec<Row>, String> {
    // A byte-order mark (spreadsheet exports) is not part of the first column's name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut records = parse_csv(text)?.into_iter();
    let header = records.next().ok_or("the manifest is empty (it needs a header: external_id,image,...)")?;
    let column = |names: &[&str]| header.iter().position(|h| names.contains(&h.trim().to_ascii_lowercase().as_str()));
    let external = column(&["external_id"]).ok_or("the header has no external_id column")?;
    let image = column(&["image", "image_path", "path"]).ok_or("the header has no image column")?;
    let optional = [column(&["display_name"]), column(&["email"]), column(&["phone"]), column(&["comment"])];
    let mut rows = Vec::new();
    for (n, record) in records.enumerate() {
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let field = |i: Option<usize>| i.and_then(|i| record.get(i)).map(|f| f.trim().to_owned()).unwrap_or_default();
        let path = PathBuf::from(field(Some(image)));
        rows.push(Row {
            // The header is line 1.
            item_id: format!("row {}", n + 2),
            external_id: field(Some(external)),
            image: if path.is_absolute() { path } else { base.join(path) },
            display_name: field(optional[0]),
            email: field(optional[1]),
            phone: field(optional[2]),
            comment: field(optional[3]),
        });
    }
    Ok(rows)
}

/// RFC 4180 records: fields separated by commas, quoted with `"` (doubled inside), records by
/// CRLF or LF (a quoted field may span lines).
pub(super) fn parse_csv(text: &str) -> Result<Vec<Vec<String>>, String> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    let mut line = 1;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                line += usize::from(c == '\n');
                field.push(c);
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') if chars.peek() == Some(&'\n') => {}
            (false, '\n') => {
                line += 1;
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {line}: a quoted field is not closed"));
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    Ok(records)
}

/// One CSV field, quoted when it needs to be.
pub(super) fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Why a row cannot be sent, found without the server: its reason code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct LocalFailure {
    pub(super) reason: &'static str,
    pub(super) message: String,
}

fn local(reason: &'static str, message: impl Into<String>) -> Option<LocalFailure> {
    Some(LocalFailure { reason, message: message.into() })
}

/// The checks of every run: the row's fields, a readable file under the size limit, and rows
/// repeating an earlier one (same external id and image file). `thorough` (`--dry-run`) also
/// decodes each image's header.
pub(super) fn check(rows: &[Row], max_image_bytes: u64, thorough: bool) -> Vec<Option<LocalFailure>> {
    let mut seen: HashMap<(String, PathBuf), String> = HashMap::new();
    rows.iter()
        .map(|row| {
            let key = (row.external_id.clone(), std::fs::canonicalize(&row.image).unwrap_or(row.image.clone()));
            if let Some(first) = seen.get(&key) {
                return local("DUPLICATE_ROW", format!("the same external_id and image as {first}"));
            }
            seen.insert(key, row.item_id.clone());
            check_row(row, max_image_bytes, thorough)
        })
        .collect()
}

fn check_row(row: &Row, max_image_bytes: u64, thorough: bool) -> Option<LocalFailure> {
    use crate::app::validate;
    let fields = validate::external_id(&row.external_id, "external_id")
        .and_then(|()| validate::display_name(&row.display_name, "display_name"))
        .and_then(|()| validate::email(&row.email, "email"))
        .and_then(|()| validate::phone(&row.phone, "phone"))
        .and_then(|()| validate::comment(&row.comment, "comment"));
    if let Err(e) = fields {
        return local(e.reason().as_str(), e.to_string());
    }
    let size = match std::fs::metadata(&row.image) {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return local("FILE_UNREADABLE", format!("{} is not a file", row.image.display())),
        Err(e) => return local("FILE_UNREADABLE", format!("{}: {e}", row.image.display())),
    };
    if size == 0 {
        return local("IMAGE_EMPTY", format!("{} is empty", row.image.display()));
    }
    if size > max_image_bytes {
        return local(
            "IMAGE_TOO_LARGE",
            format!("{} is {size} bytes; the limit is {max_image_bytes} (--max-image-bytes)", row.image.display()),
        );
    }
    if thorough {
        let decoded = image::ImageReader::open(&row.image)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()));
        if let Err(e) = decoded {
            return local("IMAGE_UNDECODABLE", format!("{}: {e}", row.image.display()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_parses_quotes_and_line_ends() {
        let text = "external_id,image,comment\r\na,\"x, y.jpg\",\"say \"\"hi\"\"\nover two lines\"\nb,b.jpg\n\n";
        let records = parse_csv(text).unwrap();
        assert_eq!(records[1], vec!["a", "x, y.jpg", "say \"hi\"\nover two lines"]);
        assert_eq!(records[2], vec!["b", "b.jpg"]);
        assert!(parse_csv("a,\"open\n").is_err());
        for value in ["plain", "a,b", "q\"q", "line\nbreak"] {
            assert_eq!(parse_csv(&csv_field(value)).unwrap()[0][0], value);
        }
    }

    #[test]
    fn manifest_rows_and_request_ids() {
        let rows = read_csv(
            "image,external_id,email\nphotos/a.jpg,cust-1,a@example.com\n\n/abs/b.png,cust-2,\n",
            Path::new("/m"),
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].image, PathBuf::from("/m/photos/a.jpg"));
        assert_eq!((rows[0].item_id.as_str(), rows[0].email.as_str()), ("row 2", "a@example.com"));
        assert_eq!(rows[1].image, PathBuf::from("/abs/b.png"));
        assert!(read_csv("external_id\nx\n", Path::new(".")).is_err());
        // The same person and image: the same id, whatever other field changed; another image,
        // person or policy: another id.
        let id = rows[0].request_id(b"image", "p");
        assert_eq!(id, Row { comment: "fixed".into(), ..rows[0].clone() }.request_id(b"image", "p"));
        assert_ne!(id, rows[0].request_id(b"other image", "p"));
        assert_ne!(id, rows[1].request_id(b"image", "p"));
        assert_ne!(id, rows[0].request_id(b"image", "q"));
        assert_eq!(read_csv("\u{feff}external_id,image\nx,y.jpg\n", Path::new(".")).unwrap().len(), 1);
        assert!(crate::app::validate_request_id(&id, "request_id").is_ok());
    }
}
