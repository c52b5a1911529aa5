//! Leaves: `file`, `disk`, `memory` and `null`, the layers that hold data.

use layers::plan::{DiskParams, FileParams, LayerSpec};

use super::optional_bool;
use super::{Keys, LayerContext};
use crate::config::fields::Reader;
use crate::config::schema::LayerKey;

pub(super) fn file(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let path = keys
        .require(
            reader,
            LayerKey::Path,
            "the image file, like path = \"data/disk0.img\"",
        )
        .and_then(|item| reader.path("path", item, context.base_dir));
    let create_item = keys.get(LayerKey::Create);
    let create = match create_item {
        Some(item) => reader.boolean("create", item),
        None => Some(false),
    };
    let direct = optional_bool(keys, reader, LayerKey::Direct, false);
    let size_bytes = match keys.get(LayerKey::Size) {
        Some(item) => reader.size("size", item, context.block_size).map(Some),
        None => {
            if let (Some(true), Some(item)) = (create, create_item) {
                reader.report(
                    &item.span,
                    "create = true needs a size for the file it creates, like size = \"1GiB\"",
                );
                None
            } else {
                Some(None)
            }
        }
    };
    Some(LayerSpec::File(FileParams {
        path: path?,
        size_bytes: size_bytes?,
        create: create?,
        direct: direct?,
    }))
}

pub(super) fn disk(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
) -> Option<LayerSpec> {
    let path = keys
        .require(
            reader,
            LayerKey::Path,
            "the block device, like path = \"/dev/nvme0n1\"",
        )
        .and_then(|item| reader.path("path", item, context.base_dir));
    let direct = optional_bool(keys, reader, LayerKey::Direct, true);
    Some(LayerSpec::Disk(DiskParams {
        path: path?,
        direct: direct?,
    }))
}

pub(super) fn leaf_size(
    keys: &mut Keys<'_>,
    reader: &mut Reader<'_>,
    context: &LayerContext<'_>,
    type_name: &str,
) -> Option<u64> {
    let hint = format!("how large the {type_name} device is, like size = \"1GiB\"");
    let item = keys.require(reader, LayerKey::Size, &hint)?;
    reader.size("size", item, context.block_size)
}
