"""Making a prepared base: fine-tune a teacher, convert it to a spiking student, distill, score."""
